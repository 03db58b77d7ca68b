"""Render and load a synthetic cluster; print the figures.

    python bench/render_load.py [--services 1000,10000,44000] [--endpoints 3] [--runs 3]

For each size: the time ``nftproxy render`` takes end to end (a subprocess reading
one JSON List, as ``kubectl get -o json`` writes), its peak RSS, the ruleset's
lines, and the time ``nft -f`` takes to load it into an empty scratch namespace
and again over itself. Medians of --runs. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import NODE_FLAGS, cluster

from nftproxy.lab.netns import Lab


def _timed(cmd: list[str], stdout: int | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout)
    return time.perf_counter() - start


def measure(services: int, endpoints: int, runs: int, workdir: Path) -> dict[str, float]:
    """Figures for one cluster size."""
    manifest = workdir / f"cluster-{services}.json"
    manifest.write_text(json.dumps(cluster(services, endpoints)))
    script = workdir / f"ruleset-{services}.nft"
    render_cmd = [sys.executable, "-m", "nftproxy.cli", "render", "-f", str(manifest), *NODE_FLAGS]
    renders, rss = [], []
    for _ in range(runs):
        with script.open("w") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(render_cmd, stdout=out)
            _, status, usage = os.wait4(proc.pid, 0)
            renders.append(time.perf_counter() - start)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"render exited {proc.returncode}")
            rss.append(usage.ru_maxrss / 1024)
    rss_mb = max(rss)
    loads, reloads = [], []
    for _ in range(runs):
        with Lab("bench") as lab:
            loads.append(_timed(["ip", "netns", "exec", lab.node, "nft", "-f", str(script)]))
            reloads.append(_timed(["ip", "netns", "exec", lab.node, "nft", "-f", str(script)]))
    return {
        "services": services,
        "endpoints": services * endpoints,
        "render_s": statistics.median(renders),
        "load_s": statistics.median(loads),
        "reload_s": statistics.median(reloads),
        "lines": script.read_text().count("\n"),
        "peak_rss_mb": rss_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", default="1000,10000,44000")
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'services':>8} {'endpoints':>9} {'render s':>9} {'load s':>7} {'reload s':>8} "
        f"{'lines':>8} {'peak RSS MB':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.services.split(",")):
            r = measure(n, args.endpoints, args.runs, Path(tmp))
            print(
                f"{r['services']:>8} {r['endpoints']:>9} {r['render_s']:>9.2f} {r['load_s']:>7.2f} "
                f"{r['reload_s']:>8.2f} {r['lines']:>8} {r['peak_rss_mb']:>11.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
