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

from nftproxy.nft.wire import NetlinkError, Socket, attributes, encode

PROTOCOLS = {"udp": socket.IPPROTO_UDP, "sctp": 132}
_NAMES = {number: name for name, number in PROTOCOLS.items()}

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE, CTA_FILTER = 1, 2, 18, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_CTA_PROTO_NUM = 1 << 3
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


def flows(sock: Socket, family: int, proto: int) -> Iterator[Flow]:
    """Every conntrack entry of one family and protocol: one dump, filtered by the kernel."""
    request = {
        CTA_TUPLE_ORIG | NLA_F_NESTED: encode(
            {CTA_TUPLE_PROTO | NLA_F_NESTED: encode({CTA_PROTO_NUM: bytes([proto])})}
        ),
        CTA_FILTER | NLA_F_NESTED: encode(
            {CTA_FILTER_ORIG_FLAGS: struct.pack("=I", CTA_FILTER_F_CTA_PROTO_NUM)}
        ),
    }
    for body in sock.dump(IPCTNL_MSG_CT_GET, family, request, subsystem=NFNL_SUBSYS_CTNETLINK):
        a = attributes(body)
        _, daddr, number, _, dport = _tuple(a[CTA_TUPLE_ORIG], family)
        if number != proto:  # kernels before 5.8 ignore the filter
            continue
        rsrc, _, _, rsport, _ = _tuple(a[CTA_TUPLE_REPLY], family)
        entry = (_NAMES[proto], daddr, dport)
        yield Flow(family, entry, (rsrc, rsport), a[CTA_TUPLE_ORIG], a.get(CTA_ZONE))


def delete(sock: Socket, flow: Flow) -> bool:
    """Delete one entry; False when it was gone already."""
    attrs = {CTA_TUPLE_ORIG | NLA_F_NESTED: flow.orig}
    if flow.zone is not None:
        attrs[CTA_ZONE] = flow.zone
    try:
        sock.dump(
            IPCTNL_MSG_CT_DELETE, flow.family, attrs, dump=False, subsystem=NFNL_SUBSYS_CTNETLINK
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
    families = {socket.AF_INET6 if ":" in addr else socket.AF_INET for _, addr, _ in plan.keep}
    protocols = {PROTOCOLS[proto] for proto, _, _ in plan.keep}
    deleted = 0
    for family in sorted(families):
        for proto in sorted(protocols):
            stale = [f for f in flows(sock, family, proto) if plan.is_stale(f.entry, f.reached)]
            deleted += sum(delete(sock, f) for f in stale)
    return deleted
