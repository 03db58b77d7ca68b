"""Events as client-go's recorder posts them, through the real client to the lab's
API server: one Event, then a series; repeats counted; a flapping object capped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from nftproxy.k8s.client import RateLimiter, event_writers
from nftproxy.k8s.events import (
    BURST,
    SERIES_WINDOW,
    EventRecorder,
    Occurrence,
    Regarding,
)
from nftproxy.lab.apiserver import FakeAPIServer

WEB = Regarding("Service", "v1", "web", "ns", "uid-1")
NODE = Regarding("Node", "v1", "node-a")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lab_api() -> Iterator[tuple[FakeAPIServer, EventRecorder, Clock]]:
    with FakeAPIServer() as api:
        cfg = client.Configuration()
        cfg.host = api.url
        create, patch = event_writers(client.ApiClient(cfg), RateLimiter(-1, 1))
        clock = Clock()
        yield api, EventRecorder(create, patch, "node-a", clock=clock), clock


def test_one_event_then_its_series(lab_api: tuple[FakeAPIServer, EventRecorder, Clock]) -> None:
    api, recorder, clock = lab_api
    bad = Occurrence(WEB, "Unprogrammable", "Programming", "spec.ports[0].port: out of range")
    recorder.handle(bad)
    ((namespace, name), event), *others = api.events.items()
    assert not others and namespace == "ns" and name.startswith("web.")
    assert event["regarding"] == {
        "kind": "Service",
        "apiVersion": "v1",
        "name": "web",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert event["reportingController"] == "nftproxy"
    assert event["reportingInstance"] == "node-a"
    assert (event["type"], event["reason"], event["action"]) == (
        "Warning",
        "Unprogrammable",
        "Programming",
    )
    for seconds in (10, 20, 30):
        clock.now += seconds
        recorder.handle(bad)
    assert api.event_writes == ["POST", "PATCH"]  # the series began; repeats counted
    assert api.events[(namespace, name)]["series"]["count"] == 2
    clock.now += SERIES_WINDOW
    recorder.flush()  # the series ended: its last count is written, then forgotten
    assert api.events[(namespace, name)]["series"]["count"] == 4
    recorder.handle(bad)
    assert api.event_writes == ["POST", "PATCH", "PATCH", "POST"]
    assert len(api.events) == 2
    for seconds in (10, 20):  # a series again; it ends before any flush sees it
        clock.now += seconds
        recorder.handle(bad)
    clock.now += SERIES_WINDOW
    recorder.handle(bad)  # its last count is written before the new Event
    assert api.event_writes[4:] == ["PATCH", "PATCH", "POST"]
    counts = sorted(e.get("series", {}).get("count", 1) for e in api.events.values())
    assert counts == [1, 3, 4]


def test_cluster_scoped_objects_get_events_in_default(
    lab_api: tuple[FakeAPIServer, EventRecorder, Clock],
) -> None:
    api, recorder, _ = lab_api
    recorder.handle(Occurrence(NODE, "SyncFailed", "Syncing", "3 syncs in a row failed"))
    ((namespace, _name),) = api.events
    assert namespace == "default"
    assert next(iter(api.events.values()))["regarding"] == {
        "kind": "Node",
        "apiVersion": "v1",
        "name": "node-a",
    }


def test_a_flapping_object_cannot_flood_the_api(
    lab_api: tuple[FakeAPIServer, EventRecorder, Clock],
) -> None:
    """Every note different (no series to fold them into): BURST Events, then the
    object's bucket is empty; another object still gets its own."""
    api, recorder, _ = lab_api
    for i in range(3 * BURST):
        recorder.handle(Occurrence(WEB, "Unprogrammable", "Programming", f"version {i}"))
    assert len(api.events) == BURST
    assert recorder.dropped == 2 * BURST
    recorder.handle(Occurrence(NODE, "SyncFailed", "Syncing", "note"))
    assert len(api.events) == BURST + 1


def test_recording_never_blocks_and_the_api_away_is_counted() -> None:
    """The queue is bounded: record() returns at once; a post that fails is logged
    and counted by the posting thread, which goes on."""
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # nothing listens
    cfg.retries = False
    create, patch = event_writers(client.ApiClient(cfg), RateLimiter(-1, 1))
    recorder = EventRecorder(create, patch, "node-a")
    for i in range(2000):
        recorder.record(WEB, "Unprogrammable", "Programming", f"{i}")
    assert recorder.dropped == 1000  # the queue holds 1,000
