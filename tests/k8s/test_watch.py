"""List and watch with the real kubernetes client against the lab's API server:
events, bookmarks, 410 Gone, dropped connections, 5xx and an absent server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from helpers import endpoint, service, slice_
from kubernetes import client

from nftproxy.k8s.cache import Cache
from nftproxy.k8s.client import RateLimiter, serves_service_cidrs, watched
from nftproxy.k8s.objects import EndpointSlice, Service
from nftproxy.k8s.reflector import Reflector, Watched
from nftproxy.lab.apiserver import FakeAPIServer, matches_labels


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


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
            service_cidrs=False,
            limiter=RateLimiter(-1, 1),
        )
        self.reflectors = {
            w.kind: Reflector(
                w, self.cache, self.stop, watch_seconds=30, backoff_max=0.5, page_size=page_size
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
    """limit/continue as kube's reflectors: 7 Services in pages of 3; when a next
    page's snapshot has expired (410), the list starts over and loses nothing."""
    with FakeAPIServer() as api:
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


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(qps=50, burst=2)
    start = time.monotonic()
    for _ in range(7):
        limiter.wait()
    assert time.monotonic() - start >= 0.09  # 2 at once, then 5 at 50/s


def test_an_unserved_resource_is_404() -> None:
    with FakeAPIServer() as api:
        cfg = client.Configuration()
        cfg.host = api.url
        watched_kinds = {
            w.kind
            for w in watched(
                client.ApiClient(cfg),
                "n",
                host_ports=False,
                service_cidrs=False,
                limiter=RateLimiter(-1, 1),
            )
        }
        assert watched_kinds == {"Service", "EndpointSlice", "Node"}
        assert not serves_service_cidrs(client.ApiClient(cfg))
    with FakeAPIServer(without=()) as api:
        cfg = client.Configuration()
        cfg.host = api.url
        assert serves_service_cidrs(client.ApiClient(cfg))


def test_watched_is_a_plain_record() -> None:
    w = Watched("Service", "v1", lambda **_: None)
    assert w.label_selector == "" and w.field_selector == ""
