"""nf_tables' netlink wire format: dump requests, attribute coding and batches, nothing
more.

nft's own listing spends about 12 microseconds per set element in user space
(10,000 Services are about 100,000 elements: 1.2 s before a single rule is
printed), while the kernel dumps them in well under 0.1 s. So nftproxy reads its
tables back over netlink itself (:mod:`nftproxy.nft.read`); this module only
moves bytes, and sends a fresh load's set elements as one batch per stage
(:mod:`nftproxy.nft.write` makes the messages). Constants are the kernel's, from
``linux/netfilter/nf_tables.h``.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Generator, Iterator
from enum import IntEnum
from typing import NamedTuple

from nftproxy.nft.errors import DumpInterruptedError, NetlinkError
from nftproxy.nft.model import Family

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request
SO_SNDBUFFORCE = 32
NFTA_LIST_ELEM = 1
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NLA_TYPE_MASK = 0x3FFF

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id
ATTR = struct.Struct("=HH")  # nlattr: length, type

FAMILIES = {Family.IP: socket.AF_INET, Family.IP6: socket.AF_INET6}

Attrs = dict[int, bytes]
"""A message's or nest's attributes by type (each type present once)."""


class Message(IntEnum):
    """The nf_tables requests nftproxy makes."""

    GETTABLE = 1
    GETCHAIN = 4
    GETRULE = 7
    GETSET = 10
    NEWSETELEM = 12
    GETSETELEM = 13
    GETGEN = 16


def _walk(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in a message or nest, in order."""
    offset, end = 0, len(data)
    unpack = ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes) -> Attrs:
    """The attributes of one message or nest, by type (the nested flag dropped)."""
    found: Attrs = {}
    offset, end = 0, len(data)
    unpack = ATTR.unpack_from
    while offset + 4 <= end:  # _walk's loop without a generator: a million calls a read
        length, kind = unpack(data, offset)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def attribute_list(data: bytes) -> list[bytes]:
    """The payloads of a list nest (every NFTA_LIST_ELEM, in order)."""
    return [payload for _, payload in _walk(data)]


def data_value(nest: bytes) -> bytes:
    """The NFTA_DATA_VALUE inside a data nest (keys and map values hold nothing else)."""
    length, kind = ATTR.unpack_from(nest)
    if kind & NLA_TYPE_MASK == NFTA_DATA_VALUE:
        return nest[4:length]
    return attributes(nest)[NFTA_DATA_VALUE]


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute as it goes on the wire, padded to 4 bytes."""
    length = 4 + len(payload)
    return ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def nest(kind: int, payload: bytes) -> bytes:
    """A nest of already encoded attributes."""
    return attr(kind | NLA_F_NESTED, payload)


def encode(attrs: dict[int, bytes]) -> bytes:
    """Attributes as they go on the wire, each padded to 4 bytes."""
    return b"".join(attr(kind, payload) for kind, payload in attrs.items())


def string(value: str) -> bytes:
    """A NUL-terminated string attribute payload."""
    return value.encode() + b"\0"


def text(payload: bytes) -> str:
    """A string attribute's value."""
    return payload.rstrip(b"\0").decode(errors="replace")


def be32(payload: bytes) -> int:
    """A big-endian 32-bit attribute's value."""
    return int.from_bytes(payload[:4], "big")


def be32_signed(payload: bytes) -> int:
    """A big-endian signed 32-bit attribute's value (priorities, verdict codes)."""
    return int.from_bytes(payload[:4], "big", signed=True)


def request(
    message: int,
    family: int,
    attrs: dict[int, bytes],
    sequence: int,
    *,
    dump: bool = True,
    subsystem: int = NFNL_SUBSYS_NFTABLES,
) -> bytes:
    """A request for message in family (AF_UNSPEC: every family): a dump, or one
    object followed by an acknowledgement. The subsystem is nf_tables unless told."""
    body = _NFGEN.pack(family, 0, 0) + encode(attrs)
    kind = (subsystem << 8) | message
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, sequence, 0) + body


def _frame(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, sequence, 0) + body


def batch(message: int, requests: list[tuple[int, bytes]], first: int) -> bytes:
    """One nf_tables transaction: each (family, encoded attributes) request as a
    ``message`` that creates, between a batch's begin and end. Sequence numbers
    start at first (the begin's); only the last request asks for an
    acknowledgement (the kernel reports every refusal anyway)."""
    subsystem = NFNL_SUBSYS_NFTABLES.to_bytes(2, "big")  # the begin's res_id
    frames = [_frame(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, b"\0\0" + subsystem)]
    kind = (NFNL_SUBSYS_NFTABLES << 8) | message
    for n, (family, attrs) in enumerate(requests, start=1):
        flags = NLM_F_REQUEST | NLM_F_CREATE | (NLM_F_ACK if n == len(requests) else 0)
        frames.append(_frame(kind, flags, first + n, _NFGEN.pack(family, 0, 0) + attrs))
    end = first + len(requests) + 1
    frames.append(_frame(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, b"\0\0" + subsystem))
    return b"".join(frames)


def batch_answer(data: bytes, first: int, acked: int) -> bool:
    """Whether one read of a batch's answer ends it: the acknowledgement of its
    request ``acked`` came (raised instead: a refusal of any of its messages, the
    sequence numbers from first to acked's end)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and first <= seq <= acked + 1:
            code = -int.from_bytes(data[offset + 16 : offset + 20], "little", signed=True)
            if code:
                raise NetlinkError(code, os.strerror(code))
            if seq == acked:
                return True
        offset += (length + 3) & ~3
    return False


class Replies(NamedTuple):
    """What one read of a request's answer holds."""

    bodies: list[bytes]  # after nfgenmsg
    done: bool  # the answer ended
    interrupted: bool  # the kernel flagged the dump as overlapping a change


def replies(data: bytes, sequence: int) -> Replies:
    """The message bodies of one request in one read (others' are skipped)."""
    out: list[bytes] = []
    interrupted = False
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        if seq == sequence:
            if kind == NLMSG_DONE:
                return Replies(out, True, interrupted)
            if kind == NLMSG_ERROR:
                code = -int.from_bytes(data[offset + 16 : offset + 20], "little", signed=True)
                if code:
                    raise NetlinkError(code, os.strerror(code))
                return Replies(out, True, interrupted)
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            out.append(data[offset + _HEADER.size + _NFGEN.size : offset + length])
        offset += (length + 3) & ~3
    return Replies(out, False, interrupted)


class Socket:
    """A netfilter netlink socket (nf_tables, or conntrack with ``subsystem``), opened
    in the caller's network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.bind((0, 0))
        self._sequence = 0
        self._buffer = bytearray(1 << 20)

    def bodies(
        self,
        message: int,
        family: int,
        attrs: dict[int, bytes],
        *,
        dump: bool = True,
        subsystem: int = NFNL_SUBSYS_NFTABLES,
    ) -> Generator[bytes, None, None]:
        """The reply bodies of one request as they arrive: a large dump need not be
        held whole. It must be read to its end (the kernel refuses a new dump on a
        socket whose last one is unfinished); an interrupted dump raises
        DumpInterruptedError there, after its last body."""
        self._sequence += 1
        self._sock.send(
            request(message, family, attrs, self._sequence, dump=dump, subsystem=subsystem)
        )
        done = interrupted = False
        try:
            while not done:
                try:
                    got = self._next_replies()
                except NetlinkError:
                    done = True  # an error reply ends the request
                    raise
                done, interrupted = got.done, interrupted or got.interrupted
                yield from got.bodies
        finally:
            while not done:  # the caller stopped early: read the dump to its end
                try:
                    done = self._next_replies().done
                except NetlinkError:
                    done = True
        if interrupted:
            raise DumpInterruptedError

    def transact(self, message: int, requests: list[tuple[int, bytes]]) -> None:
        """Send requests as one nf_tables transaction (see :func:`batch`): all of it
        is committed, or nothing and NetlinkError with the first refusal."""
        if not requests:
            return
        first = self._sequence + 1
        data = batch(message, requests, first)
        acked = first + len(requests)
        self._sequence = acked + 1  # the batch's end
        self._sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + (64 << 10))
        self._sock.send(data)
        while True:
            size = self._sock.recv_into(self._buffer)
            if batch_answer(bytes(self._buffer[:size]), first, acked):
                return

    def _next_replies(self) -> Replies:
        """The next read of the current request's replies (an error reply raises)."""
        size = self._sock.recv_into(self._buffer)
        return replies(bytes(self._buffer[:size]), self._sequence)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
