"""Connections from inside a namespace, and what became of them."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import time
from dataclasses import dataclass

from nftproxy.lab.sctp import init_packet
from nftproxy.nft.kernel import in_netns

REJECT = "REJECT"
DROP = "DROP"
UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class Reached:
    """A responder answered: who (namespace), its address and port, and the client it saw."""

    responder: str
    local: str
    port: int
    peer: str


Outcome = Reached | str


def namespace(ns: str) -> contextlib.AbstractContextManager[None]:
    """Run the block with this thread inside ns (sockets made there stay there)."""
    return in_netns(ns)


def _socket(ns: str, dst: str, kind: int, proto: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    with namespace(ns):
        return socket.socket(family, kind, proto)


def _classify(err: OSError) -> str:
    if isinstance(err, TimeoutError):
        return DROP
    if err.errno == errno.ECONNREFUSED:
        return REJECT
    if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES):
        return UNREACHABLE
    raise err


def connect(
    ns: str, dst: str, port: int, proto: str, *, src: str | None = None, timeout: float = 1.0
) -> Outcome:
    """One TCP connection or UDP exchange from ns to dst:port."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with _socket(ns, dst, kind) as s:
        s.settimeout(timeout)
        if src is not None:
            s.bind((src, 0))
        try:
            s.connect((dst, port))
            if proto == "udp":
                s.send(b"?")
            line = s.recv(512).decode().split()
        except OSError as err:
            return _classify(err)
    if len(line) != 4:
        return DROP
    return Reached(line[0], line[1], int(line[2]), line[3])


def send_sctp_init(ns: str, dst: str, port: int, *, src: str | None = None) -> None:
    """Send one raw SCTP INIT from ns to dst:port, from a random source port.

    A fresh source port makes a fresh conntrack entry, so every INIT is NATed anew.
    """
    with _socket(ns, dst, socket.SOCK_RAW, 132) as s:
        if src is not None:
            s.bind((src, 0))
        sport = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        tag = int.from_bytes(os.urandom(4), "big") | 1
        s.sendto(init_packet(sport, port, tag), (dst, 0))


def wait_for_line(path: os.PathLike[str], needle: str, timeout: float = 1.0) -> str | None:
    """The first line of a growing file that contains needle, or None after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            for line in f:
                if needle in line:
                    return line.strip()
        time.sleep(0.02)
    return None
