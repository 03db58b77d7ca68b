"""First-packet cost through the rendered ruleset at 10 and at 30,000 Services.

    python bench/datapath.py [--services 10,30000] [--connects 2000]

A client, a node and a server namespace; the node holds nftproxy's ruleset for
N ClusterIP Services (one endpoint each, on the server). The client opens
--connects new TCP connections to one Service's ClusterIP; each connect() is
timed (SYN out, DNAT, SYN-ACK back). The sizes are measured in turns, ten rounds,
so that the machine's drift falls on all alike. Prints p50 and p99 per size and the
ratio of the largest to the smallest size's p50 (goal: at most 1.15). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _lab(services: int, stack: contextlib.ExitStack) -> tuple[str, str]:
    """A lab holding N Services; returns the client namespace and the target ClusterIP."""
    loaded = Loaded()
    load_objects(iter(objects(services)), "bench", loaded)
    script = render_script(build(compute_state(loaded.objects, NODE)), names.TABLE)
    lab = stack.enter_context(Lab(f"dp{services}"))
    lab.add_node_ip(ipaddress.ip_address(NODE_IP))
    client = lab.add_host(ipaddress.ip_address(CLIENT))
    lab.add_host(ipaddress.ip_address(SERVER))
    lab.start_responders([80])
    lab.load(script)
    return client, cluster_ip(services - 1)  # the last one added


def measure(sizes: list[int], connects: int, rounds: int = 10) -> dict[int, list[float]]:
    """Connect times per size, the sizes measured in turns so that the machine's
    drift over time falls on all of them alike."""
    times: dict[int, list[float]] = {n: [] for n in sizes}
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
    args = parser.parse_args()
    sizes = [int(x) for x in args.services.split(",")]
    times = measure(sizes, args.connects)
    print(f"{'services':>8} {'p50 us':>8} {'p99 us':>8}")
    p50s = {}
    for n in sizes:
        ordered = sorted(times[n])
        p50s[n] = statistics.median(ordered)
        print(f"{n:>8} {p50s[n]:>8.1f} {ordered[int(len(ordered) * 0.99)]:>8.1f}")
    print(f"p50 ratio {max(sizes)}/{min(sizes)}: {p50s[max(sizes)] / p50s[min(sizes)]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
