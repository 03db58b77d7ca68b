"""List and watch with the real kubernetes client against the lab's API server:
events, bookmarks, 410 Gone, dropped connections, 5xx and an absent server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from helpers import endpoint, service, slice_, wait_for
from kubernetes import client

from nftproxy.k8s.cache import Cache
from nftproxy.k8s.client import RateLimiter, api_client, watched
from nftproxy.k8s.objects import EndpointSlice, Service
from nftproxy.k8s.reflector import Reflector, Watched
from nftproxy.lab.apiserver import FakeAPIServer, matches_labels


class Watching:
    """A fake API server, a cache and the reflectors run would start."""

    def __init__(self, api: FakeAPIServer, page_size: int = 500) -> None:
        self.api = api
        self.changes = 0
        self.cache = Cache("node-a", on_change=self._changed)
        self.stop = threading.Event()
        cfg = client.Configuration()
        cfg.host = api.url
        what = watched(
            client.ApiClient(cfg),
            "node-a",
            host_ports=True,
            limiter=RateLimiter(-1, 1),
        )
        self.errors: list[tuple[str, str]] = []
        self.reflectors = {
            w.kind: Reflector(
                w,
                self.cache,
                self.stop,
                watch_seconds=30,
                backoff_max=0.5,
                page_size=page_size,
                on_error=lambda kind, reason: self.errors.append((kind, reason)),
            )
            for w in what
        }
        for r in self.reflectors.values():
            threading.Thread(target=r.run, daemon=True).start()
        wait_for(lambda: all(r.synced.is_set() for r in self.reflectors.values()))

    def _changed(self) -> None:
        self.changes += 1

    def names(self) -> dict[str, set[str]]:
        snap, _ = self.cache.take()
        out: dict[str, set[str]] = {"Service": set(), "EndpointSlice": set()}
        for _, obj in snap.objects:
            if isinstance(obj, (Service, EndpointSlice)):
                out[type(obj).__name__].add(obj.name)
        return out


@pytest.fixture
def watching() -> Iterator[Watching]:
    with FakeAPIServer() as api:
        api.bookmark_every = 0.1
        api.apply(service("a"))
        api.apply(slice_("a", endpoint("10.1.0.1"), name="a-1"))
        w = Watching(api)
        yield w
        w.stop.set()


def _services(w: Watching) -> Reflector:
    return w.reflectors["Service"]


def test_first_list_then_events(watching: Watching) -> None:
    assert watching.names() == {"Service": {"a"}, "EndpointSlice": {"a-1"}}
    watching.api.apply(service("b", clusterIP="172.30.0.11"))
    watching.api.delete("EndpointSlice", "ns", "a-1")
    wait_for(lambda: watching.names() == {"Service": {"a", "b"}, "EndpointSlice": set()})
    assert _services(watching).lists == 1


def test_selectors_as_kube_proxy(watching: Watching) -> None:
    headless = {"service.kubernetes.io/headless": ""}
    watching.api.apply(service("h", clusterIP="None", labels=headless))
    watching.api.apply(service("b", clusterIP="172.30.0.11"))
    wait_for(lambda: "b" in watching.names()["Service"])
    assert "h" not in watching.names()["Service"]
    # An object that comes to match the selector no more is deleted from the view.
    watching.api.apply(service("b", clusterIP="172.30.0.11", labels=headless))
    wait_for(lambda: "b" not in watching.names()["Service"])
    assert matches_labels("!a,b=c,d!=e", {"b": "c"}) and not matches_labels("!a", {"a": "1"})


def test_bookmarks_move_the_resource_version(watching: Watching) -> None:
    other = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"}}
    rv = int(_services(watching).resource_version)
    watching.api.apply(other)  # a change the Service watch does not see
    wait_for(lambda: int(_services(watching).resource_version) > rv)
    assert watching.names()["Service"] == {"a"}


def test_410_relists_without_losing_or_replaying(watching: Watching) -> None:
    api = watching.api
    api.stop()  # away: the watches break and cannot come back
    api.apply(service("b", clusterIP="172.30.0.11"))
    api.delete("Service", "ns", "a")
    api.store.compact()  # the history is gone: resuming gets 410
    api.start()
    wait_for(lambda: _services(watching).lists == 2, timeout=10)
    wait_for(lambda: watching.names()["Service"] == {"b"})
    _, changes = watching.cache.take()
    assert changes.services <= {("ns", "a"), ("ns", "b")}


def test_lists_come_in_pages_and_an_expired_page_lists_again() -> None:
    """limit/continue as kube's reflectors: 7 Services in pages of 3 (from a server
    that pages even the first list, at resourceVersion 0); when a next page's
    snapshot has expired (410), the list starts over and loses nothing."""
    with FakeAPIServer() as api:
        api.watch_cache = False
        for i in range(7):
            api.apply(service(f"s{i}", clusterIP=f"172.30.0.{10 + i}"))
        api.expire_next_continues(1)
        w = Watching(api, page_size=3)
        try:
            assert w.names()["Service"] == {f"s{i}" for i in range(7)}
            services = _services(w)
            # One page, the 410 on the next, then the 3 pages of the list again.
            assert services.lists == 1 and services.pages == 1 + 3
            lists = [r for r in api.requests if r == "GET /api/v1/services"]
            assert len(lists) == 5
            api.delete("Service", "ns", "s0")
            wait_for(lambda: "s0" not in w.names()["Service"])
        finally:
            w.stop.set()


def test_dropped_watch_resumes_from_its_version(watching: Watching) -> None:
    watching.api.drop_watches()
    watching.api.apply(service("b", clusterIP="172.30.0.11"))
    wait_for(lambda: "b" in watching.names()["Service"])
    assert _services(watching).lists == 1  # resumed, not listed again
    assert _services(watching).failures >= 1


def test_5xx_is_retried(watching: Watching) -> None:
    watching.api.fail_next(3, 503)
    watching.api.drop_watches()
    watching.api.apply(service("b", clusterIP="172.30.0.11"))
    wait_for(lambda: "b" in watching.names()["Service"], timeout=10)


def test_invalid_update_keeps_the_version_before(watching: Watching) -> None:
    with structlog.testing.capture_logs() as logs:
        watching.api.apply(service("a", clusterIP="172.30.0.999"))
        watching.api.apply(service("b", clusterIP="172.30.0.11"))
        wait_for(lambda: "b" in watching.names()["Service"])
    snap, _ = watching.cache.take()
    kept = [o for _, o in snap.objects if isinstance(o, Service) and o.name == "a"]
    assert [str(ip) for ip in kept[0].cluster_ips] == ["172.30.0.10"]
    bad = [e for e in logs if e["event"] == "invalid object skipped"]
    assert bad[0]["object"] == "Service ns/a" and bad[0]["field"] == "spec.clusterIPs[0]"


def test_node_is_watched_by_name() -> None:
    def node(name: str, ip: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": spec,
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }

    with FakeAPIServer() as api:
        api.apply(node("node-a", "192.168.0.2", podCIDRs=["10.0.1.0/24"]))
        api.apply(node("node-b", "192.168.0.3"))
        w = Watching(api)
        try:
            snap, _ = w.cache.take()
            assert snap.node is not None
            assert [str(i) for i in snap.node.ips] == ["192.168.0.2"]
            assert [str(c) for c in snap.node.pod_cidrs] == ["10.0.1.0/24"]
            assert snap.node.zone == "z1" and snap.node.eligible
            taint = {"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}
            api.apply(node("node-a", "192.168.0.9", taints=[taint]))
            wait_for(lambda: (n := w.cache.take()[0].node) is not None and not n.eligible)
        finally:
            w.stop.set()


GARBAGE = [
    (b"[1, 2, 3]", "not an object"),
    (b"not JSON at all", "not JSON"),
    (b'{"type": "ADDED", "object": 7}', "bad object"),
    (b'{"type": "ADDED"}', "bad object"),
    (b'{"type": "WHAT", "object": {}}', "bad type"),
    (b'{"type": "MODIFIED", "object": {"kind": "Service"}}', "no metadata"),
]


@pytest.mark.parametrize(("line", "reason"), GARBAGE)
def test_a_malformed_watch_line_is_counted_and_watching_goes_on(
    watching: Watching, line: bytes, reason: str
) -> None:
    """Every resource: the line is counted with its reason, a fresh watch follows
    from the last good version, and later changes still arrive."""
    w = watching
    for plural in ("services", "endpointslices"):
        w.api.send_raw(plural, line)
    wait_for(lambda: ("Service", reason) in w.errors and ("EndpointSlice", reason) in w.errors)
    w.api.apply(service("b", clusterIP="172.30.0.11"))
    w.api.apply(slice_("b", endpoint("10.1.0.2"), name="b-1"))
    wait_for(lambda: w.names() == {"Service": {"a", "b"}, "EndpointSlice": {"a-1", "b-1"}})
    assert _services(w).lists == 1  # the position was kept: no relist


@pytest.mark.parametrize(
    ("how", "reason"),
    [("no-metadata", "bad list"), ("garbled", "not JSON"), ("cut", "connection")],
)
def test_a_broken_list_is_counted_and_listed_again(how: str, reason: str) -> None:
    """A list's items are stored as they arrive: what a broken one stored before it
    broke is made right by the next list, and the connection is not reused."""
    with FakeAPIServer() as api:
        for i in range(40):
            api.apply(service(f"s{i}", clusterIP=f"172.30.1.{i}"))
        api.break_next_lists(4, how)
        w = Watching(api)
        try:
            assert ("Service", reason) in w.errors or ("EndpointSlice", reason) in w.errors
            assert w.names()["Service"] == {f"s{i}" for i in range(40)}
            api.delete("Service", "ns", "s0")
            wait_for(lambda: "s0" not in w.names()["Service"])
        finally:
            w.stop.set()


def test_a_reflector_that_crashes_starts_again() -> None:
    """Whatever escapes (here the sink fails on one event) is counted as a crash and
    the reflector goes on."""
    with FakeAPIServer() as api:
        api.bookmark_every = 0.1
        w = Watching(api)
        try:
            real = w.cache.event
            calls = {"n": 0}

            def failing_once(kind: str, type_: str, obj: dict[str, Any]) -> None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("a bug in the sink")
                real(kind, type_, obj)

            w.cache.event = failing_once  # type: ignore[method-assign]
            api.apply(service("b", clusterIP="172.30.0.11"))
            wait_for(lambda: ("Service", "crash") in w.errors)
            wait_for(lambda: "b" in w.names()["Service"], timeout=10)
        finally:
            w.stop.set()


def test_the_first_list_comes_from_the_watch_cache_later_ones_in_pages() -> None:
    """As client-go's reflector: the first list asks for resourceVersion 0, which the
    API server's watch cache answers whole (one request at kube-proxy's 5 QPS,
    not one per 500 objects); a list after a 410 reads the latest version, paged."""
    with FakeAPIServer() as api:
        for i in range(7):
            api.apply(service(f"s{i}", clusterIP=f"172.30.0.{10 + i}"))
        w = Watching(api, page_size=3)
        try:
            assert w.names()["Service"] == {f"s{i}" for i in range(7)}
            services = _services(w)
            assert services.lists == 1 and services.pages == 1
            api.stop()
            api.apply(service("s7", clusterIP="172.30.0.17"))
            api.store.compact()  # the watch cannot resume: 410, and a list again
            api.start()
            wait_for(lambda: services.lists == 2, timeout=10)
            assert services.pages == 1 + 3
            assert w.names()["Service"] == {f"s{i}" for i in range(8)}
        finally:
            w.stop.set()


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(qps=50, burst=2)
    start = time.monotonic()
    for _ in range(7):
        limiter.wait()
    assert time.monotonic() - start >= 0.09  # 2 at once, then 5 at 50/s


def test_an_unserved_optional_resource_counts_as_listed_and_empty() -> None:
    """ServiceCIDRs on a server before 1.33 (404): the reflector is synced, holds
    nothing, and asks no more; where they are served, it lists them."""
    for without, served in ((("servicecidrs",), False), ((), True)):
        with FakeAPIServer(without=without) as api:
            cfg = client.Configuration()
            cfg.host = api.url
            what = watched(client.ApiClient(cfg), "n", host_ports=False, limiter=RateLimiter(-1, 1))
            assert [w.kind for w in what] == ["Service", "EndpointSlice", "Node", "ServiceCIDR"]
            stop = threading.Event()
            cache = Cache("n")
            reflector = Reflector(what[-1], cache, stop, watch_seconds=30, backoff_max=0.5)
            thread = threading.Thread(target=reflector.run, daemon=True)
            thread.start()
            wait_for(reflector.synced.is_set)
            assert reflector.given_up is not served
            if not served:
                thread.join(timeout=5)
                assert not thread.is_alive() and reflector.failures == 0
            stop.set()


def test_api_connections_have_tcp_keepalive() -> None:
    """A watch whose peer vanished is noticed by TCP keepalive (client-go's timings)."""
    with FakeAPIServer() as api:
        client_ = api_client(master=api.url, kubeconfig=None)
        pool = client_.rest_client.pool_manager.connection_from_url(api.url)
        conn = pool._new_conn()
        conn.connect()
        assert conn.sock is not None
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        conn.close()


def test_watched_is_a_plain_record() -> None:
    w = Watched("Service", "v1", lambda **_: None)
    assert w.label_selector == "" and w.field_selector == ""
