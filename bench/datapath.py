"""First-packet cost through the rendered ruleset at 10 and at 30,000 Services.

    python bench/datapath.py [--services 10,30000] [--connects 2000] [--counters on,off]

A client, a node and a server namespace; the node holds nftproxy's ruleset for
N ClusterIP Services (one endpoint each, on the server). The client opens
--connects new TCP connections to one Service's ClusterIP; each connect() is
timed (SYN out, DNAT, SYN-ACK back). The sizes are measured in turns, ten rounds,
so that the machine's drift falls on all alike; each size with the per-Service
counters on and off (--counters). Prints p50 and p99 per size, the ratio of the
largest to the smallest size's p50 with counters on (goal: at most 1.2), and what
counting costs at each size (on/off). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import socket
import statistics
import sys
import time

from cluster import NODE_IP

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab
from nftproxy.lab.probe import namespace
from nftproxy.nft.render import render_script
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig

CLIENT = "10.0.0.2"
SERVER = "10.200.0.2"
NODE = NodeConfig(
    "node-a",
    (ipaddress.ip_address(NODE_IP),),
    (ipaddress.ip_network("10.0.0.0/8"),),
    (ipaddress.ip_network("172.16.0.0/12"),),
)


def cluster_ip(i: int) -> str:
    return str(ipaddress.ip_address("172.16.0.1") + i)


def objects(services: int) -> list[dict[str, object]]:
    """N ClusterIP Services, all backed by the one server."""
    docs: list[dict[str, object]] = []
    for i in range(services):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"s{i}", "namespace": "bench"},
                "spec": {"clusterIP": cluster_ip(i), "ports": [{"name": "p", "port": 80}]},
            }
        )
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"s{i}-1",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": f"s{i}"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [SERVER]}],
                "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
            }
        )
    return docs


def connect_times(ns: str, dst: str, count: int) -> list[float]:
    """Microseconds each of count fresh TCP connects took."""
    out = []
    for _ in range(count):
        with namespace(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s:
            start = time.perf_counter_ns()
            s.connect((dst, 80))
            out.append((time.perf_counter_ns() - start) / 1000)
    return out


Size = tuple[int, bool]
"""(Services, counters on)."""


def _lab(size: Size, stack: contextlib.ExitStack) -> tuple[str, str]:
    """A lab holding N Services; returns the client namespace and the target ClusterIP."""
    services, counting = size
    loaded = Loaded()
    load_objects(iter(objects(services)), "bench", loaded)
    node = dataclasses.replace(NODE, service_counters=counting)
    script = render_script(build(compute_state(loaded.objects, node)), names.TABLE)
    lab = stack.enter_context(Lab(f"dp{services}{'c' if counting else 'n'}"))
    lab.add_node_ip(ipaddress.ip_address(NODE_IP))
    client = lab.add_host(ipaddress.ip_address(CLIENT))
    lab.add_host(ipaddress.ip_address(SERVER))
    lab.start_responders([80])
    lab.load(script)
    return client, cluster_ip(services - 1)  # the last one added


def measure(sizes: list[Size], connects: int, rounds: int = 10) -> dict[Size, list[float]]:
    """Connect times per size, the sizes measured in turns so that the machine's
    drift over time falls on all of them alike."""
    times: dict[Size, list[float]] = {n: [] for n in sizes}
    with contextlib.ExitStack() as stack:
        labs = {n: _lab(n, stack) for n in sizes}
        for client, target in labs.values():
            connect_times(client, target, 200)  # warm up caches, neighbours, conntrack
        for _ in range(rounds):
            for n, (client, target) in labs.items():
                times[n] += connect_times(client, target, connects // rounds)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", default="10,30000")
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--counters", default="on,off", help="on, off or both")
    args = parser.parse_args()
    counts = [int(x) for x in args.services.split(",")]
    modes = [m == "on" for m in args.counters.split(",")]
    times = measure([(n, c) for n in counts for c in modes], args.connects)
    print(f"{'services':>8} {'counters':>8} {'p50 us':>8} {'p99 us':>8}")
    p50s = {}
    for (n, c), got in times.items():
        ordered = sorted(got)
        p50s[(n, c)] = statistics.median(ordered)
        p99 = ordered[int(len(ordered) * 0.99)]
        print(f"{n:>8} {'on' if c else 'off':>8} {p50s[(n, c)]:>8.1f} {p99:>8.1f}")
    big, small = max(counts), min(counts)
    for c in modes:
        ratio = p50s[(big, c)] / p50s[(small, c)]
        print(f"p50 ratio {big}/{small}, counters {'on' if c else 'off'}: {ratio:.3f}")
    if set(modes) == {True, False}:
        for n in counts:
            print(f"p50 on/off at {n}: {p50s[(n, True)] / p50s[(n, False)]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
