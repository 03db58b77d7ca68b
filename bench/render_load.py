"""Render and load a synthetic cluster; print the figures.

    python bench/render_load.py [--services 1000,10000,44000] [--endpoints 3] [--runs 3]

For each size: the time ``nftproxy render`` takes end to end (a subprocess reading
one JSON List, as ``kubectl get -o json`` writes), its peak RSS, the ruleset's
lines, the time ``nft -f`` takes to load it into an empty scratch namespace and
again over itself, and nft's peak RSS. Then ``nftproxy apply`` end to end into an
empty namespace (read, build, the staged load): its time and the peak RSS of its
process tree (nft children included); and a one-endpoint change applied by a new
process, planned against the checkpoint the last apply kept ("one"), and against
the tables read back ("one, read"). The reference is one plain map holding as
many endpoints (``addr . port : addr . port``), loaded by nft in the same run; the
ratio is apply / reference. Medians of --runs. Needs root.
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
from sync import one_endpoint_changed

from nftproxy.lab.netns import Lab


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds a command took, and its peak RSS in MB (its output dropped)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def reference_script(endpoints: int) -> str:
    """One plain map of as many endpoints as the cluster has."""
    addrs = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(endpoints))
    elements = ",\n".join(f"{a} . 80 : {a} . 8080" for a in addrs)
    decl = "type ipv4_addr . inet_service : ipv4_addr . inet_service"
    return f"table ip reference {{\n map m {{\n  {decl}\n  elements = {{ {elements} }}\n }}\n}}\n"


def measure(services: int, endpoints: int, runs: int, workdir: Path) -> dict[str, float]:
    """Figures for one cluster size."""
    manifest = workdir / f"cluster-{services}.json"
    manifest.write_text(json.dumps(cluster(services, endpoints)))
    script = workdir / f"ruleset-{services}.nft"
    render_cmd = [
        sys.executable,
        "-m",
        "nftproxy.cli",
        "render",
        "-f",
        str(manifest),
        *NODE_FLAGS,
    ]
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
    reference = workdir / f"reference-{services}.nft"
    reference.write_text(reference_script(services * endpoints))
    changed = workdir / f"changed-{services}.json"
    changed.write_text(json.dumps(one_endpoint_changed(cluster(services, endpoints))))
    loads, reloads, refs, nft_rss, applies, apply_rss = [], [], [], [], [], []
    ones: list[float] = []
    ones_read: list[float] = []
    apply_cmd = [*render_cmd, "--checkpoint", ""]
    apply_cmd[apply_cmd.index("render")] = "apply"
    for _ in range(runs):
        with Lab("bench") as lab:
            nft = ["ip", "netns", "exec", lab.node, "nft", "-f"]
            seconds, peak = _timed([*nft, str(script)])
            loads.append(seconds)
            nft_rss.append(peak)
            reloads.append(_timed([*nft, str(script)])[0])
            refs.append(_timed([*nft, str(reference)])[0])
        with Lab("bench") as lab:
            seconds, peak = _timed([*apply_cmd, "--netns", lab.node])
            applies.append(seconds)
            apply_rss.append(peak)
            # One endpoint changed, by a new process: planned against the checkpoint
            # the last apply kept, then (changed back) against the tables read.
            kept = ["--netns", lab.node, "--checkpoint", str(workdir / "checkpoint")]
            _timed([*apply_cmd[:-2], *kept])
            one = [*apply_cmd[:-2], *kept]
            one[one.index(str(manifest))] = str(changed)
            ones.append(_timed(one)[0])
            ones_read.append(_timed([*apply_cmd, "--netns", lab.node])[0])
    return {
        "services": services,
        "endpoints": services * endpoints,
        "render_s": statistics.median(renders),
        "load_s": statistics.median(loads),
        "reload_s": statistics.median(reloads),
        "lines": script.read_text().count("\n"),
        "peak_rss_mb": rss_mb,
        "nft_rss_mb": max(nft_rss),
        "apply_s": statistics.median(applies),
        "apply_rss_mb": max(apply_rss),
        "reference_s": statistics.median(refs),
        "one_s": statistics.median(ones),
        "one_read_s": statistics.median(ones_read),
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
        f"{'lines':>8} {'peak RSS MB':>11} {'nft RSS MB':>10} {'apply s':>7} "
        f"{'apply RSS MB':>12} {'ref s':>6} {'ratio':>5} {'one s':>6} {'ratio':>5} "
        f"{'one, read s':>11} {'ratio':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.services.split(",")):
            r = measure(n, args.endpoints, args.runs, Path(tmp))
            print(
                f"{r['services']:>8} {r['endpoints']:>9} {r['render_s']:>9.2f} {r['load_s']:>7.2f} "
                f"{r['reload_s']:>8.2f} {r['lines']:>8} {r['peak_rss_mb']:>11.0f} "
                f"{r['nft_rss_mb']:>10.0f} {r['apply_s']:>7.2f} {r['apply_rss_mb']:>12.0f} "
                f"{r['reference_s']:>6.2f} {r['apply_s'] / r['reference_s']:>5.1f} "
                f"{r['one_s']:>6.2f} {r['one_s'] / r['reference_s']:>5.1f} "
                f"{r['one_read_s']:>11.2f} {r['one_read_s'] / r['reference_s']:>5.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
