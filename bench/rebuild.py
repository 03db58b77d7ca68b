"""The sync after a refused transaction, at scale: its time and memory; prints the figures.

    python bench/rebuild.py [--services 5000] [--endpoints 50]

In a scratch namespace holding the cluster's tables (one endpoint since changed),
each way the loop can recover, in a process of its own: ``planned``, what follows
one failure (read the kernel, plan against it, apply the difference); ``staged``,
what follows a second failure in a row (the tables replaced whole, in stages);
``script``, the whole replace as one nft script (what every failure did before).
For each: seconds, the peak RSS of the process (it holds the ruleset, as the
loop does) and of its largest nft child. A pod's memory holds both at once at
worst: their sum is what the chart's limit must cover. Needs root.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from cluster import cluster
from sync import one_endpoint_changed, ruleset

from nftproxy.lab.netns import Lab
from nftproxy.nft.kernel import Libnftables
from nftproxy.sync.apply import read_tables, replace, sync

WAYS = ("planned", "staged", "script")


def recover(way: str, netns: str, services: int, endpoints: int) -> dict[str, Any]:
    """One way, in this process, over the tables the parent loaded."""
    rs = ruleset(one_endpoint_changed(cluster(services, endpoints)))
    kernel = Libnftables(netns)
    start = time.perf_counter()
    if way == "planned":
        sync(kernel, rs, current=read_tables(kernel))
    else:
        replace(kernel, rs, staged=way == "staged")
    seconds = time.perf_counter() - start
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "way": way,
        "seconds": round(seconds, 2),
        "process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "nft_child_mb": round(child),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(recover(args.way, args.netns, args.services, args.endpoints)))
        return 0
    print(f"{'way':>8} {'seconds':>8} {'process MB':>10} {'nft child MB':>12} {'sum MB':>7}")
    for way in WAYS:
        with Lab("rebuild") as lab:
            sync(Libnftables(lab.node), ruleset(cluster(args.services, args.endpoints)))
            sizes = ["--services", str(args.services), "--endpoints", str(args.endpoints)]
            out = subprocess.run(
                [sys.executable, __file__, *sizes, "--way", way, "--netns", lab.node],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        r = json.loads(out)
        print(
            f"{way:>8} {r['seconds']:>8.2f} {r['process_mb']:>10} {r['nft_child_mb']:>12} "
            f"{r['process_mb'] + r['nft_child_mb']:>7}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
