"""A responder that answers on every given port with who it is and whom it saw.

Run inside a namespace: ``python -m nftproxy.lab.responder NAME LOGFILE PORT...``.
Every TCP connection and UDP datagram gets one line back:
``NAME LOCAL_ADDR LOCAL_PORT PEER_ADDR``. SCTP INITs (read from a raw socket,
the machine having no SCTP stack) are written to LOGFILE in the same form.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import sys

from nftproxy.lab.sctp import ports as sctp_ports

IP_PKTINFO = 8  # linux/in.h; missing from Python's socket module
IPPROTO_SCTP = 132


def _answer(name: str, local: str, port: int, peer: str) -> bytes:
    return f"{name} {local} {port} {peer}\n".encode()


def _listeners(port_list: list[int]) -> list[tuple[socket.socket, str, int]]:
    out = []
    for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for port in port_list:
            tcp = socket.socket(family, socket.SOCK_STREAM)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            for s in (tcp, udp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((any_addr, port))
            tcp.listen(64)
            if family == socket.AF_INET:
                udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            out += [(tcp, "tcp", port), (udp, "udp", port)]
    return out


def _udp_reply(sock: socket.socket, name: str, port: int) -> None:
    _data, anc, _, peer = sock.recvmsg(2048, 256)
    for level, kind, raw in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            _ifindex, _spec, dst = struct.unpack("i4s4s", raw[:12])
            local = socket.inet_ntop(socket.AF_INET, dst)
            info = struct.pack("i4s4s", 0, dst, b"\0" * 4)
            sock.sendmsg([_answer(name, local, port, peer[0])], [(level, kind, info)], 0, peer)
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            dst6 = raw[:16]
            local = socket.inet_ntop(socket.AF_INET6, dst6)
            info = struct.pack("16si", dst6, 0)
            sock.sendmsg([_answer(name, local, port, peer[0])], [(level, kind, info)], 0, peer)


def _sctp_log(sock: socket.socket, name: str, log: str, v6: bool) -> None:
    data, peer = sock.recvfrom(4096)
    if v6:
        payload, dst = data, "?"  # IPv6 raw sockets do not deliver the header
    else:
        header_len = (data[0] & 0x0F) * 4
        payload, dst = data[header_len:], socket.inet_ntop(socket.AF_INET, data[16:20])
    _, dport = sctp_ports(payload)
    with open(log, "a") as f:
        f.write(f"sctp {name} {dst} {dport} {ipaddress.ip_address(peer[0])}\n")


def serve(name: str, log: str, port_list: list[int]) -> None:
    """Answer forever."""
    listeners = _listeners(port_list)
    raws = []
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            raws.append(socket.socket(family, socket.SOCK_RAW, IPPROTO_SCTP))
    by_fd = {s.fileno(): (s, proto, port) for s, proto, port in listeners}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([s for s, _, _ in listeners] + raws, [], [])
        for s in readable:
            if s in raws:
                _sctp_log(s, name, log, s.family == socket.AF_INET6)
                continue
            sock, proto, port = by_fd[s.fileno()]
            if proto == "udp":
                _udp_reply(sock, name, port)
                continue
            conn, peer = sock.accept()
            with conn, contextlib.suppress(OSError):  # a client may reset first
                local = conn.getsockname()[0]
                conn.sendall(_answer(name, local, port, peer[0]))


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]])
