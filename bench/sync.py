"""Kernel sync at scale: full apply, a restarted proxy's apply, diff; prints the figures.

    python bench/sync.py [--services 10000,44000] [--endpoints 3] [--runs 3]

For each size, in a scratch namespace: a full apply on an empty kernel; an apply
by a fresh process-like state (new libnftables context, nothing remembered) over
the up-to-date table with one endpoint changed, with the objects its transaction
touches; reading the table back over netlink; a diff against the kernel (read,
plan, report), and the same diff reading through nft's JSON listing instead.
Times are end to end (read, parse, plan, apply), medians of --runs. Needs root.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cluster import NODE_IP, NODE_NAME, cluster

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Ruleset
from nftproxy.nft.transaction import AddElements, DeleteElements
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig, parse_cidrs
from nftproxy.sync.apply import drift, read_tables, sync

T = TypeVar("T")
NODE = NodeConfig(
    NODE_NAME,
    (ipaddress.ip_address(NODE_IP),),
    parse_cidrs("10.0.0.0/8"),
    parse_cidrs("172.16.0.0/12"),
)


def ruleset(doc: dict[str, Any]) -> Ruleset:
    loaded = Loaded()
    load_objects(iter([doc]), "bench", loaded)
    return build(compute_state(loaded.objects, NODE))


def one_endpoint_changed(doc: dict[str, Any]) -> dict[str, Any]:
    """The same cluster with one endpoint of one ClusterIP Service replaced."""
    slice_ = next(
        i
        for i in doc["items"]
        if i["kind"] == "EndpointSlice" and i["metadata"]["name"] == "svc-7-abc"
    )
    slice_["endpoints"][1]["addresses"] = ["10.255.0.7"]
    return doc


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def one_run(base: Ruleset, changed: Ruleset) -> dict[str, Any]:
    """Every figure once, in a fresh namespace."""
    with Lab("bench-sync") as lab, tempfile.TemporaryDirectory() as tmp:
        full, _ = _timed(lambda: sync(Libnftables(lab.node), base))
        # A fresh context, nothing remembered: what a restarted proxy without a checkpoint does.
        restart, result = _timed(lambda: sync(Libnftables(lab.node), changed))
        cp = Path(tmp) / "checkpoint"
        sync(Libnftables(lab.node), base, checkpoint=cp)
        with_cp, cp_result = _timed(lambda: sync(Libnftables(lab.node), changed, checkpoint=cp))
        assert cp_result.from_checkpoint

        def diff(via_nft: bool) -> int:
            current = read_tables(Libnftables(lab.node), via_nft=via_nft)
            return len(drift(base, current, chain_comments=not via_nft))  # nft's JSON lacks them

        diff_s, diffs = _timed(lambda: diff(False))
        diff_nft, nft_diffs = _timed(lambda: diff(True))
        read_s, _ = _timed(lambda: read_tables(Libnftables(lab.node)))
        assert diffs == nft_diffs
    elements = sum(
        len(c.elements)
        for tx in result.transactions
        for c in tx.changes
        if isinstance(c, (AddElements, DeleteElements))
    )
    changes = sum(len(tx.changes) for tx in result.transactions)
    return {
        "full": full,
        "restart": restart,
        "checkpoint": with_cp,
        "diff": diff_s,
        "diff_nft": diff_nft,
        "read": read_s,
        "changes": changes,
        "elements": elements,
        "summary": str(result.summary),
        "diffs": diffs,
    }


def measure(services: int, endpoints: int, runs: int) -> None:
    base = ruleset(cluster(services, endpoints))
    changed = ruleset(one_endpoint_changed(cluster(services, endpoints)))
    results = [one_run(base, changed) for _ in range(runs)]

    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in results))

    r = results[0]
    print(
        f"{services:>8} {med('full'):>9.2f} {med('restart'):>11.2f} {med('checkpoint'):>14.2f} "
        f"{r['changes']:>8} {r['elements']:>9} {r['summary']:>32} {med('read'):>7.2f} "
        f"{med('diff'):>7.2f} {r['diffs']:>6} {med('diff_nft'):>13.2f}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", default="10000,44000")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'services':>8} {'full s':>9} {'restart s':>11} {'checkpoint s':>14} {'changes':>8} "
        f"{'elements':>9} {'objects':>32} {'read s':>7} {'diff s':>7} {'diffs':>6} "
        f"{'diff via nft':>13}"
    )
    for n in (int(x) for x in args.services.split(",")):
        measure(n, args.endpoints, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
