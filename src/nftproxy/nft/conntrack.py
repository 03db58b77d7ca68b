"""Deleting stale UDP and SCTP conntrack entries, so clients leave dead endpoints.

A UDP "connection" lives in conntrack as long as the client keeps sending; when
its endpoint goes away, the entry keeps DNATing to it (kubernetes#19029). After a
sync, the entries of every Service entry whose endpoints changed are checked in
one pass over one kernel-filtered dump per family and protocol: an entry that
reaches an endpoint the Service no longer has (or was never DNATed, while the
Service had no endpoints) is deleted, so the next datagram is NATed afresh.
Endpoints that still serve (terminating, during a rollout) keep their flows, as
in kube-proxy. What is stale is decided from what was applied and what is
wanted (:func:`plan_stale`), never from reading the ruleset back.

Conntrack is spoken over netlink directly: pyroute2 0.9's dumps are IPv4-only
and its filtered IPv6 dump fails with EINVAL.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from nftproxy.nft.errors import NetlinkError
from nftproxy.nft.wire import Socket, attributes, encode

PROTOCOLS = {"udp": socket.IPPROTO_UDP, "sctp": 132}
_NAMES = {number: name for name, number in PROTOCOLS.items()}

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE, CTA_FILTER = 1, 2, 18, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_CTA_IP_DST = 1 << 1
CTA_FILTER_F_CTA_PROTO_NUM = 1 << 3
CTA_FILTER_F_CTA_PROTO_DST_PORT = 1 << 5
PER_ENTRY_DUMPS = 32
"""Up to this many changed entries, one dump per entry, filtered by the kernel on the
entry's address and port (a few ms each, however many flows the node has); more, and
one dump per family and protocol parsed here (about 2 s for 100,000 UDP flows).
Measured with bench/conntrack.py."""
NLA_F_NESTED = 0x8000

EntryKey = tuple[str, str, int]
"""(protocol, Service entry address, entry port) as a client sends to it."""
Target = tuple[str, int]
"""(endpoint address, endpoint port)."""


@dataclass(frozen=True)
class StalePlan:
    """The Service entries whose endpoints changed, each with the endpoints whose
    flows stay; flows of those entries to anything else are stale."""

    keep: Mapping[EntryKey, frozenset[Target]]

    def __bool__(self) -> bool:
        return bool(self.keep)

    def is_stale(self, entry: EntryKey, reached: Target) -> bool:
        """Whether a flow to entry that reached ``reached`` must go."""
        kept = self.keep.get(entry)
        return kept is not None and reached not in kept


def plan_stale(
    previous: Mapping[EntryKey, frozenset[Target]],
    desired: Mapping[EntryKey, frozenset[Target]],
    serving: Mapping[EntryKey, frozenset[Target]],
) -> StalePlan:
    """Which flows a sync makes stale.

    ``previous`` and ``desired`` are the endpoints each UDP/SCTP entry reached by the
    rules applied before and after; ``serving`` the endpoints that still serve,
    terminating ones included, whose flows are kept.
    """
    none: frozenset[Target] = frozenset()
    changed = {k for k in previous.keys() | desired.keys() if previous.get(k) != desired.get(k)}
    return StalePlan({k: desired.get(k, none) | serving.get(k, none) for k in sorted(changed)})


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: where the client sent, and who answers."""

    family: int
    entry: EntryKey
    reached: Target
    orig: bytes  # the CTA_TUPLE_ORIG payload, to name the entry when deleting it
    zone: bytes | None


def _address(ip: dict[int, bytes], family: int, v4: int, v6: int) -> str:
    raw = ip[v4] if family == socket.AF_INET else ip[v6]
    return socket.inet_ntop(family, raw)


def _tuple(payload: bytes, family: int) -> tuple[str, str, int, int, int]:
    """(source, destination, protocol, source port, destination port) of a tuple."""
    a = attributes(payload)
    ip, proto = attributes(a[CTA_TUPLE_IP]), attributes(a[CTA_TUPLE_PROTO])
    sport = (
        struct.unpack("!H", proto[CTA_PROTO_SRC_PORT][:2])[0] if CTA_PROTO_SRC_PORT in proto else 0
    )
    dport = (
        struct.unpack("!H", proto[CTA_PROTO_DST_PORT][:2])[0] if CTA_PROTO_DST_PORT in proto else 0
    )
    return (
        _address(ip, family, CTA_IP_V4_SRC, CTA_IP_V6_SRC),
        _address(ip, family, CTA_IP_V4_DST, CTA_IP_V6_DST),
        proto[CTA_PROTO_NUM][0],
        sport,
        dport,
    )


def _filter(family: int, proto: int, entry: EntryKey | None) -> dict[int, bytes]:
    """A dump request for one protocol, and with entry only the flows sent to it."""
    ports = {CTA_PROTO_NUM: bytes([proto])}
    flags = CTA_FILTER_F_CTA_PROTO_NUM
    orig = {}
    if entry is not None:
        _, addr, port = entry
        ports[CTA_PROTO_DST_PORT] = struct.pack("!H", port)
        flags |= CTA_FILTER_F_CTA_PROTO_DST_PORT
        # Kernel 6.18 matches no IPv6 flow when filtering on an IPv6 address (checked
        # here): those are filtered by port in the kernel and by address below.
        if family == socket.AF_INET:
            ip = {CTA_IP_V4_DST: socket.inet_pton(family, addr)}
            orig[CTA_TUPLE_IP | NLA_F_NESTED] = encode(ip)
            flags |= CTA_FILTER_F_CTA_IP_DST
    orig[CTA_TUPLE_PROTO | NLA_F_NESTED] = encode(ports)
    return {
        CTA_TUPLE_ORIG | NLA_F_NESTED: encode(orig),
        CTA_FILTER | NLA_F_NESTED: encode({CTA_FILTER_ORIG_FLAGS: struct.pack("=I", flags)}),
    }


def flows(sock: Socket, family: int, proto: int, entry: EntryKey | None = None) -> Iterator[Flow]:
    """The conntrack entries of one family and protocol (and with entry, only those
    sent to it): one dump, filtered by the kernel."""
    request = _filter(family, proto, entry)
    for body in sock.bodies(IPCTNL_MSG_CT_GET, family, request, subsystem=NFNL_SUBSYS_CTNETLINK):
        a = attributes(body)
        _, daddr, number, _, dport = _tuple(a[CTA_TUPLE_ORIG], family)
        if number != proto or (entry is not None and (daddr, dport) != entry[1:]):
            continue  # kernels before 5.8 ignore the filter; IPv6 is filtered here
        rsrc, _, _, rsport, _ = _tuple(a[CTA_TUPLE_REPLY], family)
        yield Flow(
            family,
            (_NAMES[proto], daddr, dport),
            (rsrc, rsport),
            a[CTA_TUPLE_ORIG],
            a.get(CTA_ZONE),
        )


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _candidates(plan: StalePlan, sock: Socket) -> Iterator[Flow]:
    """The flows that may be stale: per changed entry, or all of a protocol."""
    if len(plan.keep) <= PER_ENTRY_DUMPS:
        for entry in plan.keep:
            yield from flows(sock, _family(entry[1]), PROTOCOLS[entry[0]], entry)
        return
    for family in sorted({_family(addr) for _, addr, _ in plan.keep}):
        for proto in sorted({PROTOCOLS[proto] for proto, _, _ in plan.keep}):
            yield from flows(sock, family, proto)


def delete(sock: Socket, flow: Flow) -> bool:
    """Delete one entry; False when it was gone already."""
    attrs = {CTA_TUPLE_ORIG | NLA_F_NESTED: flow.orig}
    if flow.zone is not None:
        attrs[CTA_ZONE] = flow.zone
    try:
        list(  # the acknowledgement, or the error
            sock.bodies(
                IPCTNL_MSG_CT_DELETE,
                flow.family,
                attrs,
                dump=False,
                subsystem=NFNL_SUBSYS_CTNETLINK,
            )
        )
    except NetlinkError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def delete_stale(plan: StalePlan, sock: Socket) -> int:
    """Delete the stale entries of plan; returns how many were deleted."""
    if not plan:
        return 0
    stale = [f for f in _candidates(plan, sock) if plan.is_stale(f.entry, f.reached)]
    return sum(delete(sock, f) for f in stale)
