"""Kernel bytes to the text nftproxy's objects hold, and back: addresses, protocols,
ports, ranges.

Used for set elements and for the constants in rules (:func:`scalar` reads,
:func:`pack` writes what it reads). The text is what :mod:`nftproxy.ruleset.build` writes (canonical
addresses, protocol names, decimal ports), so read-back objects compare equal.
"""

from __future__ import annotations

import socket

from nftproxy.nft.model import DataType, Family
from nftproxy.nft.wire import FAMILIES

# nft's datatype numbers (nftables' include/datatype.h), as stored in a set's key type.
TYPE_BITS = 6
DATATYPES = {
    1: DataType.VERDICT,
    4: DataType.INDEX,
    7: DataType.ADDR,
    8: DataType.ADDR,
    12: DataType.PROTO,
    13: DataType.SERVICE,
}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOLS.items()}
ADDR_SIZE = {Family.IP: 4, Family.IP6: 16}
_SIZES = {DataType.PROTO: 1, DataType.SERVICE: 2, DataType.INDEX: 4}


class UnknownTypeError(ValueError):
    """A set key or data type nftproxy never writes."""


def datatypes(code: int) -> tuple[DataType, ...]:
    """A set's key or data type number as its components (concatenations hold several)."""
    out: list[DataType] = []
    while code:
        out.append(DATATYPES.get(code & ((1 << TYPE_BITS) - 1), DataType.OTHER))
        code >>= TYPE_BITS
    return tuple(reversed(out))


def size(kind: DataType, family: Family) -> int:
    """How many bytes one component of this type takes, unpadded."""
    return ADDR_SIZE[family] if kind == DataType.ADDR else _SIZES[kind]


def length(kinds: tuple[DataType, ...], family: Family) -> int:
    """The bytes a key or value of these types takes, as :func:`layout` lays it out:
    one component alone its size, several each a multiple of 4."""
    if len(kinds) == 1:
        return size(kinds[0], family)
    return sum((size(k, family) + 3) & ~3 for k in kinds)


def layout(kinds: tuple[DataType, ...], family: Family, total: int) -> list[tuple[int, int]]:
    """(offset, size) of each component: concatenated ones start on 4-byte boundaries."""
    if len(kinds) == 1:
        return [(0, total)]
    out, offset = [], 0
    for kind in kinds:
        n = size(kind, family)
        out.append((offset, n))
        offset += (n + 3) & ~3
    return out


def scalar(kind: DataType, family: Family, data: bytes) -> str:
    """One component's text."""
    if kind == DataType.ADDR:
        return socket.inet_ntop(FAMILIES[family], data[: ADDR_SIZE[family]])
    if kind == DataType.PROTO:
        return PROTOCOLS.get(data[0], str(data[0]))
    if kind == DataType.SERVICE:
        return str(int.from_bytes(data[:2], "big"))
    if kind == DataType.INDEX:  # numgen writes host byte order
        return str(int.from_bytes(data[:4], "little"))
    raise UnknownTypeError(kind)


def pack(kind: DataType, family: Family, text: str) -> bytes:
    """One component's bytes, unpadded: the inverse of :func:`scalar`. Text the
    kernel could not hold raises ValueError."""
    try:
        if kind == DataType.ADDR:
            return socket.inet_pton(FAMILIES[family], text)
        if kind == DataType.PROTO:
            number = PROTOCOL_NUMBERS.get(text)
            return (number if number is not None else int(text)).to_bytes(1, "big")
        if kind == DataType.SERVICE:
            return int(text).to_bytes(2, "big")
        if kind == DataType.INDEX:
            return int(text).to_bytes(4, "little")
    except (OSError, ValueError, OverflowError) as err:
        raise ValueError(f"not a {kind.value} of {family.value}: {text!r}") from err
    raise UnknownTypeError(kind)


def span(kind: DataType, family: Family, low: bytes, high: bytes) -> str:
    """An inclusive range as nft prints it: a value, a CIDR when aligned, else ``a-b``."""
    if low == high:
        return scalar(kind, family, low)
    lo, hi = int.from_bytes(low, "big"), int.from_bytes(high, "big")
    width = len(low) * 8
    count = hi - lo + 1
    if kind == DataType.ADDR and count & (count - 1) == 0 and lo % count == 0:
        return f"{scalar(kind, family, low)}/{width - count.bit_length() + 1}"
    return f"{scalar(kind, family, low)}-{scalar(kind, family, high)}"


def prefix(family: Family, data: bytes, bits: int) -> str:
    """``addr/bits`` for an address compared on its first bits (the whole one: no suffix)."""
    full = ADDR_SIZE[family]
    addr = socket.inet_ntop(FAMILIES[family], data[:full].ljust(full, b"\0"))
    return addr if bits == full * 8 else f"{addr}/{bits}"
