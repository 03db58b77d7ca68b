"""Conntrack cleanup at scale: a sync that removes endpoints, on a node with many flows.

    python bench/conntrack.py [--services 10000] [--flows 100000] [--runs 3]

In a scratch namespace: --services UDP Services x 3 endpoints are applied, then
--flows UDP conntrack entries (client -> ClusterIP, answered by an endpoint; the
same number of TCP entries beside them) are written into the namespace's conntrack
table over ctnetlink. Then one sync removes endpoints of 1, 10 and 100 Services
and the stale flows are deleted; printed: the sync, planning what is stale
(reach of the rules before and after), the cleanup, and how many entries went.
As a reference, the way of nftproxy before (pyroute2, one reply-filtered dump per
stale endpoint; IPv4 only) on the same table. Medians of --runs. Needs root.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import statistics
import struct
import sys
import time
from typing import Any

from cluster import NODE_IP, NODE_NAME, cluster

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab
from nftproxy.nft.conntrack import (
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    NFNL_SUBSYS_CTNETLINK,
    NLA_F_NESTED,
    StalePlan,
)
from nftproxy.nft.kernel import Libnftables, in_netns
from nftproxy.nft.wire import encode
from nftproxy.proxy.state import ProxyState, compute_state, serving_flows
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig, parse_cidrs
from nftproxy.sync.apply import stale_plan, sync

NODE = NodeConfig(
    NODE_NAME,
    (ipaddress.ip_address(NODE_IP),),
    parse_cidrs("10.0.0.0/8"),
    parse_cidrs("172.16.0.0/12"),
)
IPCTNL_MSG_CT_NEW = 0
CTA_TIMEOUT = 7
NLM_F_REQUEST, NLM_F_CREATE = 0x1, 0x400
BATCH = 256


def state_of(doc: dict[str, Any]) -> ProxyState:
    loaded = Loaded()
    load_objects(iter([doc]), "bench", loaded)
    return compute_state(loaded.objects, NODE)


def _tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    ip = encode({CTA_IP_V4_SRC: socket.inet_aton(src), CTA_IP_V4_DST: socket.inet_aton(dst)})
    ports = encode(
        {
            CTA_PROTO_NUM: bytes([proto]),
            CTA_PROTO_SRC_PORT: struct.pack("!H", sport),
            CTA_PROTO_DST_PORT: struct.pack("!H", dport),
        }
    )
    return encode({CTA_TUPLE_IP | NLA_F_NESTED: ip, CTA_TUPLE_PROTO | NLA_F_NESTED: ports})


def _new(seq: int, orig: bytes, reply: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + encode(
        {
            CTA_TUPLE_ORIG | NLA_F_NESTED: orig,
            CTA_TUPLE_REPLY | NLA_F_NESTED: reply,
            CTA_TIMEOUT: struct.pack("!I", 600),
        }
    )
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_CREATE, seq, 0) + body


def write_flows(netns: str, state: ProxyState, flows: int) -> None:
    """flows UDP entries (and as many TCP ones) spread over the Services' endpoints."""
    ports = [sp for fs in state.families for sp in fs.service_ports if sp.cluster_endpoints]
    with in_netns(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    with sock:
        sock.bind((0, 0))
        messages: list[bytes] = []
        for n in range(flows):
            sp = ports[n % len(ports)]
            ep = sp.cluster_endpoints[(n // len(ports)) % len(sp.cluster_endpoints)]
            client = str(ipaddress.ip_address("10.200.0.1") + n // 1000)
            vip, sport = str(sp.entries[0].addr), 1024 + n % 1000
            for proto in (socket.IPPROTO_UDP, socket.IPPROTO_TCP):
                orig = _tuple(client, vip, proto, sport, sp.entries[0].port)
                reply = _tuple(str(ep.addr), client, proto, ep.port, sport)
                messages.append(_new(len(messages), orig, reply))
        for i in range(0, len(messages), BATCH):
            sock.send(b"".join(messages[i : i + BATCH]))


def shrink(doc: dict[str, Any], services: int) -> dict[str, Any]:
    """The cluster with the first endpoint of the first ``services`` Services gone."""
    for item in doc["items"]:
        if (
            item["kind"] == "EndpointSlice"
            and int(item["metadata"]["name"].split("-")[1]) < services
        ):
            item["endpoints"] = item["endpoints"][1:]
    return doc


def pyroute2_way(netns: str, plan: StalePlan) -> int:
    """nftproxy's cleanup before: one reply-filtered dump per stale (entry, endpoint)."""
    from pyroute2 import Conntrack  # noqa: PLC0415
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: PLC0415

    found = 0
    ct = Conntrack(netns=netns)
    try:
        for (_, vip, port), keep in plan.keep.items():
            for addr, ep_port in sorted(keep):
                reply = NFCTAttrTuple(family=socket.AF_INET, saddr=addr, proto=17, sport=ep_port)
                found += sum(
                    1
                    for e in ct.dump_entries(tuple_reply=reply)
                    if e.tuple_orig.daddr == vip and e.tuple_orig.dport == port
                )
    finally:
        ct.close()
    return found


def one_run(services: int, flows: int, removed: int) -> dict[str, float]:
    doc = cluster(services, 3, "UDP")
    before = state_of(doc)
    after = state_of(shrink(cluster(services, 3, "UDP"), removed))
    base, changed = build(before), build(after)
    with Lab("bench-ct") as lab:
        kernel = Libnftables(lab.node)
        sync(kernel, base)
        write_flows(lab.node, before, flows)
        start = time.perf_counter()
        result = sync(kernel, changed)
        synced = time.perf_counter()
        plan = stale_plan(result, changed, serving_flows(after))
        planned = time.perf_counter()
        deleted = kernel.delete_stale_flows(plan)
        cleaned = time.perf_counter()
        # The way before, on the same table (the kept endpoints stand in for the removed:
        # one dump each, as it made one per removed endpoint).
        ref_start = time.perf_counter()
        pyroute2_way(lab.node, StalePlan({k: v for k, v in list(plan.keep.items())[:removed]}))
        ref = time.perf_counter() - ref_start
    return {
        "sync": synced - start,
        "plan": planned - synced,
        "cleanup": cleaned - planned,
        "deleted": deleted,
        "before_way": ref,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--flows", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'removed':>8} {'sync s':>8} {'plan s':>8} {'cleanup s':>10} {'deleted':>8} "
        f"{'pyroute2 way s':>15}"
    )
    for removed in (1, 10, 100):
        results = [one_run(args.services, args.flows, removed) for _ in range(args.runs)]

        def med(key: str, results: list[dict[str, float]] = results) -> float:
            return float(statistics.median(r[key] for r in results))

        print(
            f"{removed:>8} {med('sync'):>8.3f} {med('plan'):>8.3f} {med('cleanup'):>10.3f} "
            f"{int(med('deleted')):>8} {med('before_way'):>15.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
