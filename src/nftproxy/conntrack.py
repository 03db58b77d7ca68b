"""Deleting stale UDP and SCTP conntrack entries, so clients leave dead endpoints.

A UDP "connection" lives in conntrack as long as the client keeps sending; when
its endpoint goes away, the entry would keep DNATing to it (kubernetes#19029).
After a sync removes endpoints, the entries that point at them are deleted
(never the whole table), so the next datagram is NATed afresh.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

PROTOCOLS = {"udp": socket.IPPROTO_UDP, "sctp": 132}


@dataclass(frozen=True)
class StaleFlow:
    """Traffic to a Service entry (address, port) that reached a removed endpoint."""

    proto: str
    entry_addr: str
    entry_port: int
    endpoint_addr: str
    endpoint_port: int


def delete_stale(flows: Iterable[StaleFlow], netns: str | None = None) -> int:
    """Delete the conntrack entries of flows; returns how many were deleted."""
    wanted = list(flows)
    if not wanted:
        return 0
    from pyroute2 import Conntrack  # noqa: PLC0415 - netlink only when needed
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: PLC0415

    deleted = 0
    ct = Conntrack(netns=netns) if netns else Conntrack()
    with contextlib.closing(ct):
        for f in wanted:
            family = socket.AF_INET6 if ":" in f.endpoint_addr else socket.AF_INET
            reply = NFCTAttrTuple(
                family=family,
                saddr=f.endpoint_addr,
                proto=PROTOCOLS[f.proto],
                sport=f.endpoint_port,
            )
            stale = [
                e.tuple_orig
                for e in ct.dump_entries(tuple_reply=reply)
                if e.tuple_orig.daddr == f.entry_addr and e.tuple_orig.dport == f.entry_port
            ]
            for orig in stale:
                try:
                    ct.entry("del", tuple_orig=orig)
                    deleted += 1
                except NetlinkError as err:
                    if err.code != errno.ENOENT:  # gone meanwhile: fine
                        raise
    return deleted
