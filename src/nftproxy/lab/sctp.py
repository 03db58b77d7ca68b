"""Just enough SCTP to send an INIT through the kernel's NAT from a raw socket.

The machines here have no SCTP socket support, but netfilter tracks and NATs
SCTP all the same; a raw INIT with a correct CRC32c exercises exactly that.
"""

from __future__ import annotations

import struct

_POLY = 0x82F63B78
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), as SCTP's checksum."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def init_packet(src_port: int, dst_port: int, tag: int) -> bytes:
    """An SCTP common header and one INIT chunk (what goes after the IP header)."""
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, tag)
    header = struct.pack("!HHII", src_port, dst_port, 0, 0)
    packet = header + chunk
    checksum = crc32c(packet)
    return packet[:8] + struct.pack("<I", checksum) + packet[12:]


def ports(packet: bytes) -> tuple[int, int]:
    """Source and destination port of an SCTP packet (without IP header)."""
    src, dst = struct.unpack("!HH", packet[:4])
    return src, dst
