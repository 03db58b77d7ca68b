"""The live demo: the real ``nftproxy run`` in a lab, driven through the API.

A throw-away node namespace, a client and four pods around it, the lab's API
server in this process, and ``nftproxy run`` as its own process watching it.
While the client connects to the Service in a loop, the Service is scaled, loses
an endpoint and is deleted through the API; after each change this prints how
long the change took to reach the kernel (from the API write to the proxy's
"synced" log line) and what the client saw.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from nftproxy.diagnose.describe import describe
from nftproxy.diagnose.explain import Explainer
from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.lab.probe import Reached, connect
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Family
from nftproxy.ruleset import names

NODE_IP = "192.168.0.2"
CLIENT = "203.0.113.2"
PODS = ("10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.1.4")
CLUSTER_IP = "10.96.0.10"
PORT = 8080


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP,
            "clusterIPs": [CLUSTER_IP],
            "ports": [{"name": "http", "port": 80, "targetPort": PORT, "nodePort": 30080}],
        },
    }


def _slice(*pods: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [p], "conditions": {"ready": True}} for p in pods],
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
    }


def _node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    }


class Syncs:
    """The proxy's "synced" log lines, with the time each arrived."""

    def __init__(self, stream: Any) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.tail.append(line.rstrip())
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "synced":
                    with self.cond:
                        self.events.append((time.monotonic(), event))
                        self.cond.notify_all()

    def after(self, t0: float, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
        """The first sync logged after t0 that applied a change."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, ev in self.events:
                    if at > t0 and ev.get("services_changed"):
                        return at, ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the proxy logged no sync:\n" + "\n".join(self.tail))
                self.cond.wait(left)


class Client:
    """Connects to the Service in a loop and remembers what answered, and when."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.lab, self.ns = lab, ns
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()  # a connection counts from when it was opened
            got = connect(self.ns, CLUSTER_IP, 80, "tcp", timeout=0.3)
            who = self.lab.owner(got.responder) if isinstance(got, Reached) else got
            self.seen.append((started, who))
            time.sleep(0.01)

    def between(self, start: float, end: float) -> collections.Counter[str]:
        return collections.Counter(w for t, w in self.seen if start <= t < end)

    def since(self, start: float, settle: float, least: int = 3) -> collections.Counter[str]:
        """What answered connections opened after start: settle seconds, and at least least.

        A dropped connection holds the loop for its whole timeout, so one opened
        just before a change can delay the first one opened after it.
        """
        time.sleep(settle)
        deadline = time.monotonic() + 10
        while sum(self.between(start, time.monotonic()).values()) < least:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return self.between(start, time.monotonic())


@contextlib.contextmanager
def _proxy(api: FakeAPIServer, lab: Lab) -> Iterator[tuple[subprocess.Popen[str], Syncs]]:
    cmd = [
        *(sys.executable, "-m", "nftproxy.cli", "--log-json", "run"),
        *("--master", api.url, "--netns", lab.node, "--hostname-override", "node-a"),
        *("--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16"),
        *("--service-cidr", "10.96.0.0/12", "--min-sync-period", "0"),
        *("--healthz-bind-address=", "--metrics-bind-address="),  # none: no port to share
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        yield proc, Syncs(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _explained(lab: Lab) -> str:
    """What ``nftproxy explain --kernel`` says of the client's connection."""
    table = Libnftables(lab.node).read_table(Family.IP, names.TABLE)
    if table is None:
        return "       (no table to explain)"
    outcomes = Explainer(table, frozenset({NODE_IP})).explain(CLIENT, CLUSTER_IP, 80, "tcp")
    text = describe(outcomes, CLIENT, CLUSTER_IP, 80, "tcp")
    lines = [line for line in text.splitlines() if "%" in line]
    return "\n".join(
        [f"       nftproxy explain --kernel --from {CLIENT} --to {CLUSTER_IP} --port 80:"]
        + [f"         {line.strip()}" for line in lines]
    )


def _show(counts: collections.Counter[str]) -> str:
    return ", ".join(f"{who} x{n}" for who, n in sorted(counts.items())) or "nothing"


def run_live_demo(settle: float = 0.6) -> int:
    """The live demo; 0 when the client saw what kube-proxy would show it."""
    ok = True
    with Lab("live") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IP))
        client_ns = lab.add_host(ipaddress.ip_address(CLIENT))
        for pod in PODS:
            lab.add_host(ipaddress.ip_address(pod))
        lab.start_responders([PORT])
        api.apply(_node())
        api.apply(_service())
        api.apply(_slice(PODS[0]))
        print(f"lab: node {lab.node} ({NODE_IP}), client {CLIENT}, pods {', '.join(PODS)}")
        print(f"API server: {api.url} (in this process); starting nftproxy run against it\n")
        with _proxy(api, lab) as (proc, syncs):
            t0 = time.monotonic()
            first_at, first = syncs.after(0)
            print(
                f"start: first sync {first['added']} objects in {first['seconds'] * 1000:.0f} ms, "
                f"{(first_at - t0) * 1000:.0f} ms after the process started"
            )
            client = Client(lab, client_ns)
            client.thread.start()
            steps: list[
                tuple[str, Callable[[], object], Callable[[collections.Counter[str]], bool]]
            ] = [
                ("shop/web has 1 endpoint", lambda: None, lambda c: set(c) == {PODS[0]}),
                (
                    "scale shop/web to 3 endpoints",
                    lambda: api.apply(_slice(*PODS[:3])),
                    lambda c: set(c) == set(PODS[:3]),
                ),
                (
                    f"remove endpoint {PODS[0]}",
                    lambda: api.apply(_slice(*PODS[1:3])),
                    lambda c: set(c) == set(PODS[1:3]),
                ),
                (
                    "delete Service shop/web",
                    lambda: api.delete("Service", "shop", "web"),
                    lambda c: set(c) == {"DROP"},
                ),
            ]
            for title, change, expect in steps:
                start = time.monotonic()
                if title != steps[0][0]:
                    change()
                    at, ev = syncs.after(start)
                    took = (
                        f"in the kernel {(at - start) * 1000:.0f} ms after the API write "
                        f"(sync {ev['seconds'] * 1000:.1f} ms)"
                    )
                else:
                    at, took = start, "as started"
                seen = client.since(at, settle)
                good = expect(seen)
                ok &= good
                print(
                    f"{'ok  ' if good else 'FAIL'} {title}: {took}\n       client saw {_show(seen)}"
                )
                if title.startswith("scale"):
                    print(_explained(lab))
            client.stop.set()
            client.thread.join()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            left = in_ns(lab.node, "nft", "list", "table", "ip", "nftproxy").count("\n")
            print(
                f"\nSIGTERM: nftproxy run exited {proc.returncode}; its table stays ({left} lines)"
            )
            ok &= proc.returncode == 0
    print(
        "demo: " + ("everything behaved as with kube-proxy" if ok else "something did NOT behave")
    )
    return 0 if ok else 1
