"""A fleet of proxies through an API server outage: how kind they are to it.

30 ``nftproxy run --dry-run`` processes (kube-proxy's QPS, nothing applied, no
sysctls) watch the lab's API server; it goes away for 10 s and comes back. Printed:
requests each proxy made while the server was away (refused, from their logs),
lists after it came back (a relist is a cost a resumed watch avoids), and how the
reconnecting watches spread over time (full jitter: not in step).

    python bench/fleet.py [--proxies 30] [--services 1000] [--outage 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from cluster import cluster

from nftproxy.lab.apiserver import FakeAPIServer


def proxy(api: FakeAPIServer, n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nftproxy.cli",
        "--log-json",
        "run",
        "--dry-run",
        f"--master={api.url}",
        f"--hostname-override=node-{n}",
        "--node-ip=192.168.0.2",
        "--healthz-bind-address=",
        "--metrics-bind-address=",
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--sync-period=1h",
        "--drift-check-period=0",
    ]


def run(proxies: int, services: int, outage: float) -> dict[str, Any]:
    api = FakeAPIServer(history=1_000_000)
    for item in cluster(services, 3)["items"]:
        api.apply(item)
    api.start()
    procs = []
    logs: list[list[str]] = []
    for n in range(proxies):
        p = subprocess.Popen(
            proxy(api, n), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        threading.Thread(
            target=lambda p=p, lines=lines: lines.extend(p.stderr), daemon=True
        ).start()
        procs.append(p)
        logs.append(lines)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for lines in logs if any('"synced"' in x for x in lines)) < proxies:
            if time.monotonic() > deadline:
                raise TimeoutError("not every proxy synced")
            time.sleep(0.2)
        time.sleep(2)
        before = [sum('"list/watch failed' in x for x in lines) for lines in logs]
        api.stop()
        down = time.monotonic()
        time.sleep(outage)
        api.start()
        up = time.monotonic()
        time.sleep(40)
        refused = [
            sum('"list/watch failed' in x for x in lines) - b
            for lines, b in zip(logs, before, strict=True)
        ]
        after = [(t - up, line) for t, line in api.timed if t >= up]
        watches = sorted(t for t, line in after if line.endswith("?watch"))
        lists = sum(1 for _, line in after if not line.endswith("?watch"))
        return {
            "proxies": proxies,
            "services": services,
            "outage (s)": round(up - down, 1),
            "requests refused per proxy, median / max": (
                f"{statistics.median(refused)} / {max(refused)}"
            ),
            "lists after the outage (relists)": lists,
            "watches resumed after the outage": len(watches),
            "reconnects: first / median / last after it came back (s)": " / ".join(
                f"{watches[i]:.1f}" for i in (0, len(watches) // 2, -1)
            )
            if watches
            else "-",
            "proxies still running": sum(1 for p in procs if p.poll() is None),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxies", type=int, default=30)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--outage", type=float, default=10.0)
    args = parser.parse_args()
    for key, value in run(args.proxies, args.services, args.outage).items():
        print(f"  {key:<58} {value}")


if __name__ == "__main__":
    main()
