"""The kernel commands end to end, as an operator runs them: a fresh process each time.

    python bench/cli.py [--services 10000] [--runs 3]

In a scratch namespace: ``nftproxy apply`` on an empty kernel, ``apply`` of the
same cluster with one endpoint changed (with its checkpoint, then without),
``diff`` (in sync) and ``diff --reader nft``. Each time includes Python's start,
reading the manifests, building the ruleset and the kernel work. Medians of
--runs, the commands taken in turns. Needs root.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import NODE_FLAGS, cluster
from sync import one_endpoint_changed

from nftproxy.lab.netns import Lab


def _run(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nftproxy.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr)
    return seconds


def one_run(base: Path, changed: Path, work: Path) -> dict[str, float]:
    with Lab("bench-cli") as lab:
        ns = ["--netns", lab.node, *NODE_FLAGS]
        cp = ["--checkpoint", str(work / "checkpoint")]
        return {
            "full": _run("apply", "-f", str(base), *ns, *cp),
            "changed, checkpoint": _run("apply", "-f", str(changed), *ns, *cp),
            "back, no checkpoint": _run("apply", "-f", str(base), *ns, "--checkpoint", ""),
            "diff": _run("diff", "-f", str(base), *ns),
            "diff --reader nft": _run("diff", "-f", str(base), *ns, "--reader", "nft"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, changed = work / "cluster.json", work / "changed.json"
        base.write_text(json.dumps(cluster(args.services, args.endpoints)))
        changed.write_text(json.dumps(one_endpoint_changed(cluster(args.services, args.endpoints))))
        results = [one_run(base, changed, work) for _ in range(args.runs)]
    print(f"{args.services} Services x {args.endpoints} endpoints, medians of {args.runs}:")
    for name in results[0]:
        print(f"  {name:<22} {statistics.median(r[name] for r in results):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
