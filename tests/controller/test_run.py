"""``nftproxy run`` end to end: the lab's API server, the real kubernetes client, the
real kernel in network namespaces, and real TCP through the rules."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from helpers import endpoint, free_port, serve, service, service_ips, slice_, wait_for
from prometheus_client.parser import text_string_to_metric_families

from nftproxy.controller.proxy import Proxy, start_proxy
from nftproxy.k8s.cache import TRIGGER_ANNOTATION
from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.live import run_live_demo
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.lab.probe import REJECT, Reached, connect
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Ruleset
from nftproxy.ruleset import names
from nftproxy.settings import Settings
from nftproxy.sync import checkpoint
from nftproxy.sync.apply import drift, read_tables

CLIENT = "203.0.113.2"
ENDPOINTS = ("10.1.0.1", "10.1.0.2", "10.1.0.3")
NODE_IPS = ("192.168.0.2", "192.168.1.2")


def node(ip: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a", **meta},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


@dataclass
class Running:
    """A lab, an API server, and a proxy running in this process."""

    lab: Lab
    api: FakeAPIServer
    proxy: Proxy
    client_ns: str
    thread: threading.Thread

    def reach(self, dst: str, port: int, tries: int = 1) -> set[str]:
        """Who answered: endpoint addresses, or the verdict."""
        seen = set()
        for _ in range(tries):
            got = connect(self.client_ns, dst, port, "tcp", timeout=0.5)
            seen.add(self.lab.owner(got.responder) if isinstance(got, Reached) else got)
        return seen

    def get(self, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
        except urllib.error.URLError:
            return 0, {}, b""  # not listening (yet)


def settings_for(api: FakeAPIServer) -> Settings:
    """The settings of a proxy in this process: the lab's node, servers on free ports."""
    return Settings(
        hostname_override="node-a",
        node_ips=(NODE_IPS[0],),
        cluster_cidr=("10.0.0.0/8",),
        service_cidr=("172.30.0.0/16",),
        master=api.url,
        min_sync_period=0.0,
        healthz_bind_address="127.0.0.1:0",
        metrics_bind_address="127.0.0.1:0",
    )


def run_args(api: FakeAPIServer, lab: Lab, *extra: str) -> list[str]:
    return [
        "run",
        "--master",
        api.url,
        "--netns",
        lab.node,
        "--hostname-override",
        "node-a",
        "--node-ip",
        NODE_IPS[0],
        "--cluster-cidr",
        "10.0.0.0/8",
        "--service-cidr",
        "172.30.0.0/16",
        "--min-sync-period",
        "0",
        "--healthz-bind-address=",
        "--metrics-bind-address=",
        *extra,
    ]


@pytest.fixture
def running() -> Iterator[Running]:
    with Lab("run") as lab, FakeAPIServer() as api:
        api.bookmark_every = 0.2
        for ip in NODE_IPS:
            lab.add_node_ip(ipaddress.ip_address(ip))
        client_ns = lab.add_host(ipaddress.ip_address(CLIENT))
        for ip in ENDPOINTS:
            lab.add_host(ipaddress.ip_address(ip))
        lab.start_responders([8080])
        api.apply(node(NODE_IPS[0]))
        api.apply(service(type="NodePort", ports=[{"name": "p", "port": 80, "nodePort": 30080}]))
        api.apply(slice_("svc", endpoint(ENDPOINTS[0]), name="svc-1"))
        proxy = start_proxy(settings_for(api), Libnftables(lab.node), netns=lab.node)
        thread = threading.Thread(target=proxy.loop.run, args=(proxy.stop, proxy.ready))
        thread.start()
        try:
            yield Running(lab, api, proxy, client_ns, thread)
        finally:
            proxy.close()
            proxy.loop.wake.set()
            thread.join(timeout=10)


def _local_lb(health_port: int) -> dict[str, Any]:
    """A LoadBalancer Service with externalTrafficPolicy Local, on health_port."""
    return service(
        "lb",
        clusterIP="172.30.0.20",
        type="LoadBalancer",
        externalTrafficPolicy="Local",
        healthCheckNodePort=health_port,
        ports=[{"name": "p", "port": 80, "nodePort": 30081}],
    )


def _slice(*ips: str) -> dict[str, Any]:
    return slice_("svc", *(endpoint(ip) for ip in ips), name="svc-1")


@pytest.mark.kernel
def test_traffic_follows_the_api(running: Running) -> None:
    r = running
    wait_for(lambda: r.reach("172.30.0.10", 80) == {ENDPOINTS[0]})
    assert r.reach(NODE_IPS[0], 30080) == {ENDPOINTS[0]}
    # Scale up: every endpoint gets traffic. A count no Service had brings its own
    # backends map, so this is a partial sync (one shared map had to be reloaded).
    r.api.apply(_slice(*ENDPOINTS))
    wait_for(lambda: r.reach("172.30.0.10", 80, tries=30) == set(ENDPOINTS))
    assert r.proxy.loop.last_partial
    # One endpoint goes: it gets nothing more.
    r.api.apply(_slice(*ENDPOINTS[1:]))
    wait_for(lambda: r.reach("172.30.0.10", 80, tries=30) == set(ENDPOINTS[1:]))
    # No endpoints: REJECT. The Service deleted: its address is unallocated, DROP.
    r.api.apply(_slice())
    wait_for(lambda: r.reach("172.30.0.10", 80) == {REJECT})
    r.api.delete("Service", "ns", "svc")
    wait_for(lambda: r.reach("172.30.0.10", 80) == {"DROP"})
    assert r.proxy.loop.failures == 0


@pytest.mark.kernel
def test_api_server_away_then_back_and_410(running: Running) -> None:
    r = running
    wait_for(lambda: r.reach("172.30.0.10", 80) == {ENDPOINTS[0]})
    r.api.stop()
    time.sleep(0.5)
    assert r.reach("172.30.0.10", 80) == {ENDPOINTS[0]}  # the rules stay
    r.api.apply(_slice(ENDPOINTS[1]))  # changed while the proxy cannot see it
    r.api.start()
    wait_for(lambda: r.reach("172.30.0.10", 80) == {ENDPOINTS[1]})
    # 410: the history is gone while away; the proxy lists again, loses nothing.
    r.api.stop()
    r.api.apply(_slice(ENDPOINTS[2]))
    r.api.store.compact()
    r.api.start()
    wait_for(lambda: r.reach("172.30.0.10", 80) == {ENDPOINTS[2]})
    services = next(x for x in r.proxy.reflectors if x.what.kind == "EndpointSlice")
    assert services.lists >= 2


@pytest.mark.kernel
def test_node_ip_change_moves_node_ports(running: Running) -> None:
    r = running
    wait_for(lambda: r.reach(NODE_IPS[0], 30080) == {ENDPOINTS[0]})
    r.api.apply(node(NODE_IPS[1]))
    wait_for(lambda: r.reach(NODE_IPS[1], 30080) == {ENDPOINTS[0]})
    assert r.reach(NODE_IPS[0], 30080) == {REJECT}  # nothing listens on the node itself


@pytest.mark.kernel
def test_kernel_matches_a_fresh_sync_and_drift_is_repaired(running: Running) -> None:
    r = running
    r.api.apply(_slice(*ENDPOINTS))
    wait_for(lambda: r.reach("172.30.0.10", 80, tries=30) == set(ENDPOINTS))
    loop = r.proxy.loop
    kernel = Libnftables(r.lab.node)
    assert loop.applied is not None
    assert drift_between(loop.applied, kernel) == 0
    in_ns(r.lab.node, "nft", "flush", "map", "ip", "nftproxy", "service-ips")
    assert r.reach("172.30.0.10", 80) != {ENDPOINTS[0], ENDPOINTS[1], ENDPOINTS[2]}
    assert loop.check_drift() > 0
    wait_for(lambda: r.reach("172.30.0.10", 80, tries=30) == set(ENDPOINTS))
    assert drift_between(loop.applied, kernel) == 0


def drift_between(applied: Any, kernel: Libnftables) -> int:
    ruleset = Ruleset(tuple(t for t in applied.values() if t is not None))
    return len(drift(ruleset, read_tables(kernel)))


@pytest.mark.kernel
def test_health_servers_and_metrics(running: Running) -> None:
    r = running
    proxy = r.proxy
    hc = free_port()
    r.api.apply(_local_lb(hc))
    r.api.apply(slice_("lb", endpoint(ENDPOINTS[0], node="node-a"), name="lb-1"))
    wait_for(lambda: r.get(hc, "/")[0] == 200)
    code, headers, body = r.get(hc, "/")
    assert json.loads(body) == {
        "service": {"namespace": "ns", "name": "lb"},
        "localEndpoints": 1,
        "serviceProxyHealthy": True,
    }
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "1"
    assert headers["X-Content-Type-Options"] == "nosniff"
    r.api.apply(slice_("lb", endpoint(ENDPOINTS[0], node="node-b"), name="lb-1"))
    wait_for(lambda: r.get(hc, "/")[0] == 503)
    assert proxy.healthz_port is not None and proxy.metrics_port is not None
    code, headers, body = r.get(proxy.healthz_port, "/healthz")
    assert code == 200 and json.loads(body)["nodeEligible"] is True
    assert r.get(proxy.healthz_port, "/livez")[0] == 200
    # The node is being drained: /healthz fails, /livez does not.
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}
    drained = node(NODE_IPS[0])
    drained["spec"] = {"taints": [taint]}
    r.api.apply(drained)
    wait_for(lambda: r.get(proxy.healthz_port or 0, "/healthz")[0] == 503)
    assert json.loads(r.get(proxy.healthz_port, "/healthz")[2])["nodeEligible"] is False
    assert r.get(proxy.healthz_port, "/livez")[0] == 200
    # The Service goes: its port closes.
    r.api.delete("Service", "ns", "lb")
    wait_for(lambda: hc not in {p for _, p in proxy.servers.listening()})
    text = r.get(proxy.metrics_port, "/metrics")[2].decode()
    for name in (
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_network_programming_duration_seconds_count",
        'kubeproxy_proxy_healthz_total{code="503"}',
        "nftproxy_elements_programmed",
        'kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="external"}',
    ):
        assert name in text, name
    assert 'kubeproxy_proxy_healthz_total{code="200"}' in text


DASHBOARD_SERIES = (
    "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_duration_seconds_count",
    "kubeproxy_network_programming_duration_seconds_bucket",
    "kubeproxy_network_programming_duration_seconds_count",
    "rest_client_requests_total",
    "rest_client_request_duration_seconds_bucket",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
)
"""What kubernetes-mixin's "Kubernetes / Proxy" dashboard and Metricbeat read."""


@pytest.mark.kernel
def test_metrics_look_like_kube_proxys(running: Running) -> None:
    """After one sync and one change, /metrics parses and holds every series the
    kube-proxy dashboards read, with client-go's labels, and no *_created series;
    an answer of 503 from the API server is counted under its code."""
    r = running
    wait_for(lambda: r.proxy.loop.syncs >= 1)
    r.api.apply(_slice(ENDPOINTS[0], ENDPOINTS[1]))
    wait_for(lambda: r.proxy.loop.syncs >= 2)
    r.api.fail_next(1, code=503)
    r.api.drop_watches()  # the watches come back, and the first request meets the 503
    assert r.proxy.metrics_port is not None
    host = r.api.url.removeprefix("http://")

    def counted(code: str) -> float:
        labels = {"code": code, "method": "GET", "host": host}
        got = r.proxy.metrics.registry.get_sample_value("rest_client_requests_total", labels)
        return float(got or 0.0)

    wait_for(lambda: counted("503") == 1)
    text = r.get(r.proxy.metrics_port, "/metrics")[2].decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    names = {s.name for s in samples}
    for series in DASHBOARD_SERIES:
        assert series in names, series
    assert not [n for n in names if n.endswith("_created")]
    requests = [s for s in samples if s.name == "rest_client_requests_total"]
    assert {s.labels["code"] for s in requests} >= {"200", "503"}
    assert all(s.labels["method"] == "GET" for s in requests)
    urls = {s.labels["url"] for s in samples if s.name.startswith("rest_client_request_duration")}
    assert f"{r.api.url}/api/v1/services" in urls  # no query string
    assert "rest_client_response_size_bytes_bucket" in names
    assert counted("200") >= 5  # a list and a watch of each resource at least


DASHBOARD = (
    Path(__file__).resolve().parents[2] / "helm" / "nftproxy" / "dashboards" / "nftproxy.json"
)
METRIC = re.compile(r"\b(?:kubeproxy|nftproxy|rest_client|process)_[a-z_]+\b")


@pytest.mark.kernel
def test_every_series_the_dashboard_queries_is_on_metrics(running: Running) -> None:
    """The chart's Grafana dashboard draws only series a running proxy exports."""
    r = running
    wait_for(lambda: r.proxy.loop.syncs >= 1)
    assert r.proxy.metrics_port is not None
    text = r.get(r.proxy.metrics_port, "/metrics")[2].decode()
    # Families, not samples: a labelled counter with no child yet has no sample.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {
        f.name + suffix
        for f in text_string_to_metric_families(text)
        for suffix in ("", *suffixes.get(f.type, ()))
    }
    board = json.loads(DASHBOARD.read_text())
    queried = {m for p in board["panels"] for t in p["targets"] for m in METRIC.findall(t["expr"])}
    assert len(queried) >= 12
    assert queried <= exported, queried - exported


@pytest.mark.kernel
def test_programming_latency_starts_at_the_changes_trigger_time(running: Running) -> None:
    """A slice stamped 7 s ago (endpoints.kubernetes.io/last-change-trigger-time, as
    the EndpointSlice controller writes it) adds about 7 s to the histogram; one
    without the stamp counts from its arrival on the watch."""
    r = running
    registry = r.proxy.metrics.registry
    name = "kubeproxy_network_programming_duration_seconds"

    def observed() -> tuple[float, float]:
        count = registry.get_sample_value(f"{name}_count") or 0.0
        return count, registry.get_sample_value(f"{name}_sum") or 0.0

    wait_for(lambda: r.proxy.loop.syncs >= 1)
    # As kube-proxy, triggers from before the proxy started are not its changes.
    time.sleep(max(0.0, r.proxy.loop.cache.started + 7.5 - time.time()))
    count, total = observed()
    stamped = _slice(ENDPOINTS[0], ENDPOINTS[1])
    stamp = datetime.datetime.fromtimestamp(time.time() - 7, datetime.UTC)
    stamped["metadata"]["annotations"] = {TRIGGER_ANNOTATION: stamp.isoformat()}
    r.api.apply(stamped)
    wait_for(lambda: observed()[0] == count + 1)
    assert 7.0 <= observed()[1] - total < 8.5
    count, total = observed()
    r.api.apply(_slice(ENDPOINTS[0]))
    wait_for(lambda: observed()[0] == count + 1)
    assert observed()[1] - total < 1.0


def _events_on(api: FakeAPIServer, kind: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.events.values()
        if (e["regarding"]["kind"], e["regarding"]["name"]) == (kind, name)
    ]


@pytest.mark.kernel
def test_what_cannot_be_programmed_is_told_on_the_object(running: Running) -> None:
    """An unprogrammable Service, written three times: exactly one Event series on
    it. A healthCheckNodePort someone else holds: an Event on its Service."""
    r = running
    wait_for(lambda: r.proxy.loop.syncs >= 1)  # watching: each version is an event

    def counts() -> list[int]:
        return [e.get("series", {}).get("count", 1) for e in _events_on(r.api, "Service", "bad")]

    for i in range(3):
        bad = service("bad", clusterIP="172.30.0.30", ports=[{"name": "p", "port": 70000}])
        bad["metadata"]["labels"] = {"try": str(i)}  # a new version each time
        r.api.apply(bad)
        if i == 0:
            wait_for(lambda: counts() == [1])
    wait_for(lambda: counts() == [2])  # the third is counted, patched later
    (event,) = _events_on(r.api, "Service", "bad")
    assert event["reason"] == "Unprogrammable" and event["type"] == "Warning"
    assert "spec.ports[0].port" in event["note"] and "70000" in event["note"]
    assert event["regarding"]["namespace"] == "ns" and event["metadata"]["namespace"] == "ns"
    assert event["reportingInstance"] == "node-a"
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r.api.apply(_local_lb(port))
        wait_for(lambda: bool(_events_on(r.api, "Service", "lb")))
    (event,) = _events_on(r.api, "Service", "lb")
    assert event["reason"] == "HealthCheckNodePortUnavailable" and str(port) in event["note"]


@pytest.mark.kernel
def test_a_stuck_sync_makes_healthz_fail(running: Running) -> None:
    r = running
    port = r.proxy.healthz_port or 0
    wait_for(lambda: r.proxy.loop.syncs > 0 and r.get(port, "/healthz")[0] == 200)
    r.proxy.stop.set()  # the loop stops: a change queued now is never applied
    r.proxy.loop.wake.set()
    r.thread.join(timeout=10)
    r.proxy.health.timeout = 0.2
    r.proxy.loop.changed()  # what the cache calls when a watch event arrives
    time.sleep(0.3)
    assert r.get(port, "/healthz")[0] == 503 and r.get(port, "/livez")[0] == 503


@pytest.mark.kernel
def test_sigterm_leaves_the_rules() -> None:
    with Lab("term") as lab, FakeAPIServer() as api:
        api.apply(service())
        api.apply(slice_("svc", endpoint(ENDPOINTS[0])))
        cmd = [sys.executable, "-m", "nftproxy.cli", "--log-json", *run_args(api, lab)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if '"synced"' in line:
                    break
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "the rules stay" in err
        assert "172.30.0.10 . tcp . 80" in in_ns(
            lab.node, "nft", "list", "map", "ip", "nftproxy", "service-ips"
        )


@pytest.mark.kernel
def test_live_demo_behaves(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_live_demo(settle=0.4) == 0
    out = capsys.readouterr().out
    assert "ok   scale shop/web to 3 endpoints" in out and "exited 0" in out


def _affinity_ids(r: Running) -> dict[str, str]:
    """The sticky Service's recorded clients: client address -> endpoint id."""
    listed = json.loads(in_ns(r.lab.node, "nft", "-j", "list", "table", "ip", "nftproxy"))
    sets = [
        o["set"]
        for o in listed["nftables"]
        if o.get("set", {}).get("name", "").startswith("affinity-")
    ]
    (s,) = sets
    return {
        e["elem"]["val"]["concat"][0]: str(e["elem"]["val"]["concat"][1]) for e in s.get("elem", [])
    }


@pytest.mark.kernel
def test_a_removed_sticky_endpoint_takes_its_clients_with_it(running: Running) -> None:
    """ClientIP affinity: the client keeps its endpoint; when that endpoint goes, the
    client's record of it is deleted, so it stays with its new endpoint when the old
    one comes back (as kube-proxy, which deletes the endpoint's set)."""
    r = running
    r.api.apply(
        service(
            type="NodePort",
            sessionAffinity="ClientIP",
            ports=[{"name": "p", "port": 80, "nodePort": 30080}],
        )
    )
    r.api.apply(_slice(*ENDPOINTS))
    wait_for(lambda: _affinity_ids_or_none(r) is not None)
    (first,) = r.reach("172.30.0.10", 80, tries=10)
    assert _affinity_ids(r) == {CLIENT: str(names.endpoint_id(first, 8080))}
    rest = [ep for ep in ENDPOINTS if ep != first]
    r.api.apply(_slice(*rest))
    wait_for(lambda: _affinity_ids(r) == {})
    (second,) = r.reach("172.30.0.10", 80, tries=10)
    assert second in rest
    synced = r.proxy.loop.syncs
    r.api.apply(_slice(*ENDPOINTS))
    wait_for(lambda: r.proxy.loop.syncs > synced)
    assert r.reach("172.30.0.10", 80, tries=20) == {second}
    assert _affinity_ids(r) == {CLIENT: str(names.endpoint_id(second, 8080))}
    assert r.proxy.loop.failures == 0


def _affinity_ids_or_none(r: Running) -> dict[str, str] | None:
    try:
        return _affinity_ids(r)
    except (ValueError, RuntimeError):  # no table yet, or no affinity set in it
        return None


def _connections(r: Running, metric: str, **labels: str) -> float | None:
    """One per-Service series as a scrape of /metrics shows it (None: absent)."""
    assert r.proxy.metrics_port is not None
    text = r.get(r.proxy.metrics_port, "/metrics")[2].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{metric}_total" and s.labels == labels:
                return float(s.value)
    return None


@pytest.mark.kernel
def test_connections_per_service_port_from_the_kernels_counters(running: Running) -> None:
    """30 connections to a Service show as 30 on its series; a change of its endpoint
    count (a new verdict in service-ips) keeps the count; connections refused for
    want of endpoints are counted apart; a deleted Service takes its series."""
    r = running
    r.api.apply(
        service("web", "default", clusterIP="172.30.0.30", ports=[{"name": "http", "port": 80}])
    )
    web_slice = partial(slice_, "web", ns="default", ports=[{"name": "http", "port": 8080}])
    r.api.apply(web_slice(endpoint(ENDPOINTS[1])))
    web = {"namespace": "default", "service": "web", "port": "http", "protocol": "TCP"}
    wait_for(lambda: r.reach("172.30.0.30", 80) == {ENDPOINTS[1]})
    scraped = _connections(r, "nftproxy_service_new_connections", **web)  # from here on, gains
    assert r.reach("172.30.0.30", 80, tries=29) == {ENDPOINTS[1]}
    assert _connections(r, "nftproxy_service_new_connections", **web) == 30
    assert scraped == 1
    synced = r.proxy.loop.syncs
    r.api.apply(web_slice(endpoint(ENDPOINTS[1]), endpoint(ENDPOINTS[2])))
    wait_for(lambda: r.proxy.loop.syncs > synced)
    assert r.reach("172.30.0.30", 80, tries=10) <= {ENDPOINTS[1], ENDPOINTS[2]}
    assert _connections(r, "nftproxy_service_new_connections", **web) == 40
    # No endpoints: refused, and counted as such.
    r.api.apply(web_slice())
    wait_for(lambda: r.reach("172.30.0.30", 80) == {REJECT})
    assert r.reach("172.30.0.30", 80, tries=4) == {REJECT}
    assert _connections(r, "nftproxy_service_rejected_connections", **web) == 5
    assert _connections(r, "nftproxy_service_new_connections", **web) == 40
    # The other Service's series is its own.
    other = {"namespace": "ns", "service": "svc", "port": "p", "protocol": "TCP"}
    assert r.reach("172.30.0.10", 80, tries=3) == {ENDPOINTS[0]}
    assert _connections(r, "nftproxy_service_new_connections", **other) == 3
    r.api.delete("Service", "default", "web")
    wait_for(lambda: _connections(r, "nftproxy_service_rejected_connections", **web) is None)
    assert _connections(r, "nftproxy_service_new_connections", **web) is None


@pytest.mark.kernel
def test_service_counters_can_be_turned_off() -> None:
    """--service-counters=false: no counting set, no counter on a map, no series."""
    with Lab("nocount") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
        api.apply(node(NODE_IPS[0]))
        serve(api, "svc", "172.30.0.10", ENDPOINTS[0])
        settings = dataclasses.replace(settings_for(api), service_counters=False)
        proxy = start_proxy(settings, Libnftables(lab.node), netns=lab.node)
        thread = threading.Thread(target=proxy.loop.run, args=(proxy.stop, proxy.ready))
        thread.start()
        try:
            wait_for(lambda: proxy.loop.syncs >= 1)
            table = in_ns(lab.node, "nft", "list", "table", "ip", "nftproxy")
            assert names.SERVICE_COUNTERS not in table
            assert "counter" not in table
            assert proxy.metrics_port is not None
            with urllib.request.urlopen(
                f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5
            ) as got:
                assert b"nftproxy_service_new_connections" not in got.read()
        finally:
            proxy.close()
            proxy.loop.wake.set()
            thread.join(timeout=10)


def _proxy_process(
    api: FakeAPIServer, lab: Lab, *extra: str
) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    """``nftproxy run`` in a process of its own, after its first sync; and what it
    logged until then."""
    cmd = [sys.executable, "-m", "nftproxy.cli", "--log-json", *run_args(api, lab, *extra)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        if line.startswith("{"):
            lines.append(json.loads(line))
        if '"synced"' in line:
            return proc, lines
    raise AssertionError(f"no sync: {proc.wait()}")


def _stopped(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """SIGTERM; what the process logged as it stopped."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def _found(lines: list[dict[str, Any]]) -> str:
    """Where a starting proxy found what the kernel holds (checkpoint, kernel)."""
    return str(next(e["source"] for e in lines if e["event"] == "found what the kernel holds"))


def _one_service(lab: Lab, api: FakeAPIServer, hosts: int) -> Callable[[], object]:
    """The lab's node, a client and the first hosts endpoints (answering on 8080);
    in the API the Node, the Service and its slice with the first endpoint. What
    a connection from the client to the Service reaches, as a function."""
    lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
    client_ns = lab.add_host(ipaddress.ip_address(CLIENT))
    for ip in ENDPOINTS[:hosts]:
        lab.add_host(ipaddress.ip_address(ip))
    lab.start_responders([8080])
    api.apply(node(NODE_IPS[0]))
    api.apply(service())
    api.apply(_slice(ENDPOINTS[0]))

    def reached() -> object:
        got = connect(client_ns, "172.30.0.10", 80, "tcp", timeout=1.0)
        return lab.owner(got.responder) if isinstance(got, Reached) else got

    return reached


@pytest.mark.kernel
def test_a_client_loop_through_stop_change_start_fails_no_connection() -> None:
    """A client connects through a Service every 20 ms while the proxy is stopped,
    its Service gains an endpoint, and a new proxy starts over the tables the
    last one left: no connection fails, and the new endpoint is reached after."""
    with Lab("restart") as lab, FakeAPIServer() as api:
        reached = _one_service(lab, api, hosts=2)
        outcomes: list[object] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.wait(0.02):
                outcomes.append(reached())

        proc, first = _proxy_process(api, lab)
        loop = threading.Thread(target=client)
        loop.start()
        try:
            time.sleep(0.5)
            stopped = _stopped(proc)
            api.apply(_slice(*ENDPOINTS[:2]))  # while no proxy runs
            time.sleep(0.5)
            proc, second = _proxy_process(api, lab)
            wait_for(lambda: ENDPOINTS[1] in outcomes)
            time.sleep(0.5)
        finally:
            stop.set()
            loop.join()
            proc.terminate()
            proc.wait(timeout=15)
        assert len(outcomes) > 50
        assert set(outcomes) == set(ENDPOINTS[:2]), [o for o in outcomes if o not in ENDPOINTS]
        # The first read the kernel (nothing kept yet); the second adopted what it kept.
        assert (_found(first), _found(second)) == ("kernel", "checkpoint")
        assert stopped[-1]["checkpoint"] == str(checkpoint.default_path(lab.node))


@pytest.mark.kernel
def test_a_restart_adopts_the_checkpoint_and_still_repairs_an_edit_made_while_down() -> None:
    """A proxy stopped keeps what it applied; the next one plans against that without
    reading the tables. An element deleted by hand while none ran is not something
    the checkpoint's stamp can show, but the kernel's ruleset generation moved, so
    the first drift check (right after the first sync) reads the kernel and puts it
    back. A checkpoint that is gone, or not the one the kernel was stamped with,
    is not adopted."""
    with Lab("adopt") as lab, FakeAPIServer() as api:
        reached = _one_service(lab, api, hosts=1)
        kept = checkpoint.default_path(lab.node)
        proc, _ = _proxy_process(api, lab, "--drift-check-period", "1h")
        _stopped(proc)
        assert kept.exists()
        in_ns(lab.node, "nft", "delete element ip nftproxy service-ips { 172.30.0.10 . tcp . 80 }")
        proc, lines = _proxy_process(api, lab, "--drift-check-period", "1h")
        try:
            assert _found(lines) == "checkpoint"
            wait_for(lambda: reached() == ENDPOINTS[0])
        finally:
            after = _stopped(proc)
        repaired = [e for e in after if e["event"] == "drift found; repairing"]
        assert [e["kind"] for e in repaired] == ["element"], repaired
        kept.unlink()
        proc, lines = _proxy_process(api, lab)
        assert _found(lines) == "kernel"
        _stopped(proc)
        kept.write_bytes(kept.read_bytes().replace(b"172.30.0.10", b"172.30.0.11"))
        proc, lines = _proxy_process(api, lab)
        assert _found(lines) == "kernel"
        _stopped(proc)


@pytest.mark.kernel
def test_init_only_fails_when_a_sysctl_cannot_be_set() -> None:
    """run --init-only, the init container's command: exit 0 once the sysctls are
    set (the table size is read-only in a network namespace: not a failure), exit 1
    when /proc/sys is read-only, as in a container without privileges."""
    established = "net.netfilter.nf_conntrack_tcp_timeout_established"
    with Lab("initonly") as lab:
        in_ns(lab.node, "sysctl", "-qw", f"{established}=1000")
        cmd = [sys.executable, "-m", "nftproxy.cli", "run", "--init-only", "--netns", lab.node]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert in_ns(lab.node, "sysctl", "-n", established).strip() == "86400"
        in_ns(lab.node, "sysctl", "-qw", f"{established}=1000")
        read_only = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys"
        refused = subprocess.run(
            ["unshare", "--mount", "sh", "-c", f'{read_only} && exec "$@"', "sh", *cmd],
            capture_output=True,
            text=True,
            check=False,
        )
        assert refused.returncode == 1, refused.stderr
        assert "nf_conntrack_tcp_timeout_established" in refused.stderr
        assert in_ns(lab.node, "sysctl", "-n", established).strip() == "1000"


def _local_endpoints(port: int) -> int | None:
    """What a healthCheckNodePort server at port says (None: nobody answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as got:
            return int(json.loads(got.read())["localEndpoints"])
    except (OSError, ValueError):
        return None


def _event(lines: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((e for e in lines if e["event"] == name), None)


@pytest.mark.kernel
def test_a_restart_builds_only_what_changed_while_it_was_down() -> None:
    """A Service deleted, one added and one's endpoints changed while no proxy ran:
    the next proxy takes the last one's index and builds those three alone, and
    the kernel then holds exactly what a cold start builds. With other node
    settings (--masquerade-all) what was kept was built otherwise: the first sync
    builds everything, planned against the kept tables."""
    took = "took what the last process applied"
    with Lab("kept") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
        api.apply(node(NODE_IPS[0]))
        for n in range(5):
            serve(api, f"s{n}", f"172.30.1.{n}", ENDPOINTS[0])
        hc = free_port()  # a Service that does not change: its health server all the same
        api.apply(_local_lb(hc))
        api.apply(slice_("lb", endpoint(ENDPOINTS[0], node="node-a"), name="lb-1"))
        proc, _ = _proxy_process(api, lab)
        _stopped(proc)
        api.delete("Service", "ns", "s0")
        serve(api, "s5", "172.30.1.5", ENDPOINTS[0])
        api.apply(slice_("s1", endpoint(ENDPOINTS[1])))
        proc, lines = _proxy_process(api, lab)
        try:
            wait_for(lambda: _local_endpoints(hc) == 1)
        finally:
            _stopped(proc)
        taken = _event(lines, took)
        assert taken is not None and (taken["owners"], taken["unchanged"]) == (6, 4), taken
        synced = _event(lines, "synced")
        assert synced is not None and synced["partial"] and synced["services_changed"] == 3
        held = service_ips(lab.node)
        assert "172.30.1.0 " not in held and "172.30.1.5 " in held
        # Other settings: planned against the kept tables, everything built.
        proc, lines = _proxy_process(api, lab, "--masquerade-all")
        _stopped(proc)
        assert _found(lines) == "checkpoint" and _event(lines, took) is None
        synced = _event(lines, "synced")
        assert synced is not None and not synced["partial"]  # all of them, s0's slice too
        # A cold start (the tables read, everything built) finds nothing to change.
        proc, lines = _proxy_process(api, lab, "--masquerade-all", "--checkpoint=")
        _stopped(proc)
        synced = _event(lines, "synced")
        assert synced is not None
        assert (synced["added"], synced["changed"], synced["removed"]) == (0, 0, 0), synced


@pytest.mark.kernel
def test_a_checkpoint_that_cannot_be_written_costs_only_the_next_read() -> None:
    """The checkpoint's folder cannot be made (read-only, full, not a folder): the
    stop still exits 0, the failure is logged, and the next start reads the tables."""
    with Lab("nokeep") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
        api.apply(node(NODE_IPS[0]))
        serve(api, "s0", "172.30.1.0", ENDPOINTS[0])
        blocked = lab.workdir / "a-file"
        blocked.write_text("not a folder")
        where = f"--checkpoint={blocked / 'checkpoint'}"
        proc, _ = _proxy_process(api, lab, where)
        stopped = _stopped(proc)  # exit 0, or it raises
        assert _event(stopped, "checkpoint failed") is not None
        assert stopped[-1]["checkpoint"] is None
        proc, lines = _proxy_process(api, lab, where)
        _stopped(proc)
        assert _found(lines) == "kernel"
        assert "172.30.1.0 " in service_ips(lab.node)


def _backends(netns: str, cluster_ip: str) -> str:
    """The service-ips element of cluster_ip, as nft lists it ("" when absent)."""
    return next((ln for ln in service_ips(netns).splitlines() if f"{cluster_ip} " in ln), "")


@pytest.mark.kernel
def test_a_service_invalid_since_the_start_keeps_what_the_last_process_applied() -> None:
    """A Service made invalid while no proxy ran has no valid version in the new
    process; the last one's checkpoint has its rules, and they stay (through a
    change of its slice, a full sync and another restart), as apply keeps them,
    until a valid version comes: then it is built again. Deleted, it goes."""
    with Lab("invalid") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
        api.apply(node(NODE_IPS[0]))
        node_port = [{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30081}]
        api.apply(service("good", clusterIP="172.30.1.1", type="NodePort", ports=node_port))
        api.apply(slice_("good", endpoint(ENDPOINTS[0])))
        serve(api, "bad", "172.30.1.2", ENDPOINTS[0])
        proc, _ = _proxy_process(api, lab)
        _stopped(proc)
        held = _backends(lab.node, "172.30.1.2")
        assert held
        invalid = service("bad", clusterIP="172.30.1.2", ports=[{"name": "p", "port": 70000}])
        api.apply(invalid)
        proc, lines = _proxy_process(api, lab)
        try:
            assert _found(lines) == "checkpoint"
            api.apply(slice_("bad", endpoint(ENDPOINTS[1])))  # put off while bad is invalid
            api.apply(node(NODE_IPS[1]))  # every Service built again: a full sync
            wait_for(lambda: NODE_IPS[1] in _table(lab))
        finally:
            stopped = _stopped(proc)
        assert any(e["event"] == "synced" and not e["partial"] for e in stopped), stopped
        assert _backends(lab.node, "172.30.1.2") == held
        assert ENDPOINTS[1] not in _table(lab)  # bad's new slice: put off
        proc, lines = _proxy_process(api, lab)  # once more: still held
        try:
            assert _found(lines) == "checkpoint"
            assert _backends(lab.node, "172.30.1.2") == held
            assert ENDPOINTS[1] not in _table(lab)
            api.apply(service("bad", clusterIP="172.30.1.2"))  # valid: built with its slice
            wait_for(lambda: ENDPOINTS[1] in _table(lab))
            assert _backends(lab.node, "172.30.1.2") == held
            api.apply(invalid)
            api.delete("Service", "ns", "bad")
            wait_for(lambda: _backends(lab.node, "172.30.1.2") == "")
        finally:
            _stopped(proc)


def _table(lab: Lab) -> str:
    return in_ns(lab.node, "nft", "list", "table", "ip", "nftproxy")


@pytest.mark.kernel
def test_a_restart_while_the_api_server_is_away_keeps_the_rules_until_it_is_back() -> None:
    """The proxy restarts while the API server is away: its lists fail and are
    retried, nothing is applied, and the rules the last one kept carry traffic.
    Once the server is back, the first sync takes the checkpoint and applies what
    changed meanwhile."""
    with Lab("away") as lab, FakeAPIServer() as api:
        reached = _one_service(lab, api, hosts=2)
        proc, _ = _proxy_process(api, lab)
        _stopped(proc)
        api.stop()
        cmd = [sys.executable, "-m", "nftproxy.cli", "--log-json", *run_args(api, lab)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        lines: list[dict[str, Any]] = []
        reader = threading.Thread(target=_read_log, args=(proc, lines), daemon=True)
        reader.start()
        try:
            wait_for(lambda: sum(e["event"] == "list/watch failed; retrying" for e in lines) >= 6)
            assert reached() == ENDPOINTS[0]
            assert not any(e["event"] == "synced" for e in lines)
            api.apply(_slice(ENDPOINTS[1]))  # while it is away
            api.start()
            wait_for(lambda: reached() == ENDPOINTS[1], timeout=20)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            reader.join(timeout=5)
        assert _found(lines) == "checkpoint"
        assert _event(lines, "took what the last process applied") is not None


def _read_log(proc: subprocess.Popen[str], into: list[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("{"):
            into.append(json.loads(line))


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["garbled", "cut"])
def test_a_broken_first_list_is_listed_again_by_the_real_process(how: str) -> None:
    """The first lists come back garbled (their end not JSON) or cut half-way: the
    process logs and retries them, and its first sync holds every Service."""
    with Lab("brokenlist") as lab, FakeAPIServer() as api:
        lab.add_node_ip(ipaddress.ip_address(NODE_IPS[0]))
        api.apply(node(NODE_IPS[0]))
        for n in range(30):
            serve(api, f"s{n}", f"172.30.1.{n}", ENDPOINTS[0])
        api.break_next_lists(4, how)
        proc, lines = _proxy_process(api, lab)
        _stopped(proc)
        failed = [e for e in lines if e["event"] == "list/watch failed; retrying"]
        assert {e["reason"] for e in failed} == {"not JSON" if how == "garbled" else "connection"}
        held = service_ips(lab.node)
        assert all(f"172.30.1.{n} " in held for n in range(30)), held
