"""``nftproxy run`` at scale, against the lab's API server; prints the figures.

    python bench/controller.py [--services 10000] [--endpoints 3] [--changes 200]

In a scratch network namespace, with N Services x M endpoints in the API server:

- cold start: from the proxy's start to the kernel fully programmed, and from the
  last list arriving to the same moment;
- one EndpointSlice change on the watch -> the kernel holding it (minSyncPeriod 0):
  median and p99 over --changes changes, one at a time;
- a scrape of /metrics (it reads the per-Service counters from the kernel), and
  the change latency again while something scrapes every 0.2 s;
- the proxy as its own process (``nftproxy run``, so that it does not share an
  interpreter with the API server): peak RSS after the first full load, CPU used
  while idle for --idle seconds, and a burst of 1,000 changes sent within one
  second: from the first change to the kernel holding all of them;
- a proxy restarted over the tables the last one left, one EndpointSlice changed
  while it was down: from its start to its first sync (the one that holds the
  change), and its peak RSS; taking the checkpoint the last one kept as it stopped,
  and reading the tables instead (medians of 3 each, alternately).

Needs root.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cluster import NODE_FLAGS, NODE_IP, NODE_NAME, cluster

from nftproxy.controller.proxy import Proxy, start_proxy
from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.netns import Lab
from nftproxy.nft.kernel import Libnftables
from nftproxy.settings import Settings


def load(api: FakeAPIServer, services: int, endpoints: int) -> list[dict[str, Any]]:
    """Put the cluster into the API server; returns its EndpointSlices."""
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_NAME},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
        }
    )
    slices = []
    for obj in cluster(services, endpoints)["items"]:
        stored = api.apply(obj)
        if obj["kind"] == "EndpointSlice":
            slices.append(stored)
    return slices


def args_for(api: FakeAPIServer, lab: Lab) -> list[str]:
    """The command line of a proxy in its own process (servers off: no port to share)."""
    return [
        "run",
        "--master",
        api.url,
        "--netns",
        lab.node,
        *NODE_FLAGS,
        "--min-sync-period",
        "0",
        "--healthz-bind-address=",
        "--metrics-bind-address=",
        "--kube-api-qps=-1",  # as settings_for
    ]


def settings_for(api: FakeAPIServer) -> Settings:
    """The settings of a proxy in this process (the same node as NODE_FLAGS)."""
    return Settings(
        hostname_override=NODE_NAME,
        node_ips=(NODE_IP,),
        cluster_cidr=("10.0.0.0/8",),
        service_cidr=("172.16.0.0/12",),
        master=api.url,
        qps=-1.0,  # no client-side limit: the bench measures the proxy, not kube-proxy's 5 QPS
        min_sync_period=0.0,
        healthz_bind_address="127.0.0.1:0",
        metrics_bind_address="127.0.0.1:0",
    )


def wait_synced(proxy: Proxy, after: int, timeout: float = 60.0) -> float:
    """Wait until a sync newer than ``after`` that left nothing pending; its end time."""
    deadline = time.monotonic() + timeout
    loop = proxy.loop
    while time.monotonic() < deadline:
        if loop.syncs > after and not proxy.cache.pending() and loop.idle.is_set():
            return loop.last_sync_end
        time.sleep(0.0005)
    raise TimeoutError("the proxy did not catch up")


def changed(sl: dict[str, Any], n: int) -> dict[str, Any]:
    """The slice with its first endpoint's address moved (a new Pod)."""
    new = copy.deepcopy(sl)
    new["endpoints"][0]["addresses"] = [f"10.{200 + n // 65536 % 50}.{n // 256 % 256}.{n % 256}"]
    return new


def change_latencies(
    api: FakeAPIServer, proxy: Proxy, slices: list[dict[str, Any]], numbers: range
) -> list[float]:
    """Seconds from each change (one at a time) to the kernel holding it, sorted."""
    latencies = []
    for n in numbers:
        before = proxy.loop.syncs
        t0 = time.monotonic()
        api.apply(changed(slices[n % len(slices)], n))
        latencies.append(wait_synced(proxy, before) - t0)
    return sorted(latencies)


def scrapes(
    api: FakeAPIServer, proxy: Proxy, slices: list[dict[str, Any]], changes: int
) -> dict[str, Any]:
    """What a scrape of /metrics costs (it reads the per-Service counters from the
    kernel), and the change latency while something scrapes every 0.2 s."""
    took = []
    for _ in range(5):
        t0 = time.monotonic()
        proxy.metrics.exposition()
        took.append(time.monotonic() - t0)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(0.2):
            proxy.metrics.exposition()

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        latencies = change_latencies(api, proxy, slices, range(changes, changes + changes // 2))
    finally:
        stop.set()
        scraper.join()
    return {
        "scrape /metrics median of 5 (ms)": round(statistics.median(took) * 1000, 1),
        "change -> kernel median, scraped (ms)": round(statistics.median(latencies) * 1000, 1),
    }


def in_process(services: int, endpoints: int, changes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Lab("bench") as lab, FakeAPIServer(history=100_000) as api:
        slices = load(api, services, endpoints)
        start = time.monotonic()
        proxy = start_proxy(settings_for(api), Libnftables(lab.node), netns=lab.node)
        # As run does: what the first full load leaves is frozen out of the GC's scans.
        thread = threading.Thread(
            target=proxy.loop.run,
            args=(proxy.stop, proxy.ready),
            kwargs={"after_first": gc.freeze},
            daemon=True,
        )
        thread.start()
        try:
            while not proxy.ready():
                time.sleep(0.001)
            listed = time.monotonic()
            end = wait_synced(proxy, 0, timeout=300)
            out["cold start (s)"] = round(end - start, 2)
            out["lists done -> programmed (s)"] = round(end - listed, 2)
            latencies = change_latencies(api, proxy, slices, range(changes))
            out["change -> kernel median (ms)"] = round(statistics.median(latencies) * 1000, 1)
            out["change -> kernel p99 (ms)"] = round(
                latencies[int(len(latencies) * 0.99) - 1] * 1000, 1
            )
            out.update(scrapes(api, proxy, slices, changes))
        finally:
            proxy.close()
            proxy.loop.wake.set()
            thread.join(timeout=30)
            gc.unfreeze()
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class SyncLog:
    """The proxy's JSON log, read as it comes: how many Services its syncs changed."""

    def __init__(self, stream: Any) -> None:
        self.changed = 0
        self.syncs = 0
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            if '"synced"' in line:
                self.changed += json.loads(line).get("services_changed", 0)
                self.syncs += 1


def burst(api: FakeAPIServer, log: SyncLog, slices: list[dict[str, Any]]) -> dict[str, Any]:
    """1,000 slice changes sent within a second, each to another Service; done when
    the proxy's syncs (logged after each commit) have changed 1,000 Services. (Reading
    the kernel instead costs seconds at 250,000 endpoints: ``nft get element``
    fetches the whole map.)"""
    picks = [(n * 7) % len(slices) for n in range(1000)]
    assert len(set(picks)) == len(picks), "needs 1,000 Services or a multiple of 7 fewer"
    before = log.changed
    t0 = time.monotonic()
    for n, i in enumerate(picks):
        api.apply(changed(slices[i], 100_000 + n))
        time.sleep(max(0.0, t0 + (n + 1) / 1000 - time.monotonic()))
    sent = time.monotonic() - t0
    while log.changed - before < len(picks):
        if time.monotonic() - t0 > 60:
            raise TimeoutError("the burst did not reach the kernel")
        time.sleep(0.005)
    return {
        "burst of 1000: sent in (s)": round(sent, 2),
        "burst of 1000: all in kernel after (s)": round(time.monotonic() - t0, 2),
    }


def own_process(services: int, endpoints: int, idle: float) -> dict[str, Any]:
    """The proxy as its own process (the API server keeps this one's interpreter)."""
    out: dict[str, Any] = {}
    with Lab("benchp") as lab, FakeAPIServer(history=100_000) as api:
        slices = load(api, services, endpoints)
        cmd = [sys.executable, "-m", "nftproxy.cli", "--log-json", *args_for(api, lab)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            log = SyncLog(proc.stderr)
            while not log.changed:
                time.sleep(0.05)
            time.sleep(1)
            out["peak RSS after first load (MB)"] = round(_peak_rss_mb(proc.pid))
            cpu = _cpu_seconds(proc.pid)
            time.sleep(idle)
            used = _cpu_seconds(proc.pid) - cpu
            out[f"idle CPU over {idle:.0f} s (% of a core)"] = round(100 * used / idle, 2)
            out.update(burst(api, log, slices))
            out["peak RSS after the burst (MB)"] = round(_peak_rss_mb(proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        out.update(restart(cmd, api, slices, lab.workdir))
    return out


def restart(
    cmd: list[str], api: FakeAPIServer, slices: list[dict[str, Any]], folder: Path, runs: int = 3
) -> dict[str, Any]:
    """A proxy started over its tables already in the kernel (the last one's, left
    on SIGTERM), with one EndpointSlice changed while no proxy ran: from its start
    to its first sync (which holds the change), and its peak RSS by then; medians of
    ``runs``, taking what the last proxy kept as it stopped (the default) and reading
    the tables instead (a checkpoint file that is not there), one after the other."""
    seen: dict[str, list[tuple[float, float]]] = {"checkpoint": [], "kernel": []}
    last: Path | None = None  # the proxy before kept to the default path
    for n in range(runs):
        fresh = folder / f"fresh-{n}"
        for how, path in (("checkpoint", last), ("kernel", fresh)):
            api.apply(changed(slices[-1 - n], 900_000 + 2 * n + (how == "kernel")))
            flags = [] if path is None else [f"--checkpoint={path}"]
            first, peak, source = _restart_once([*cmd, *flags])
            assert source == how, (how, source)
            seen[how].append((first, peak))
        last = fresh
    out: dict[str, Any] = {}
    for how, label in (("checkpoint", "kept checkpoint"), ("kernel", "tables read")):
        out[f"restart, {label}: first sync after (s)"] = round(
            statistics.median(t for t, _ in seen[how]), 2
        )
        out[f"restart, {label}: peak RSS (MB)"] = round(statistics.median(m for _, m in seen[how]))
    return out


def _restart_once(cmd: list[str]) -> tuple[float, float, str]:
    """Seconds from start to the first sync, peak RSS, and where the proxy found
    what the kernel holds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    source = ""
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"found what the kernel holds"' in line:
                source = json.loads(line)["source"]
            if '"synced"' in line:
                break
        first = time.monotonic() - t0
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # the rest, unread
        time.sleep(1)
        return first, _peak_rss_mb(proc.pid), source
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=3)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--idle", type=float, default=60.0)
    a = p.parse_args()
    print(f"{a.services} Services x {a.endpoints} endpoints")
    for key, value in {
        **in_process(a.services, a.endpoints, a.changes),
        **own_process(a.services, a.endpoints, a.idle),
    }.items():
        print(f"  {key:<48} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
