"""When a change was triggered, for the programming latency (kube-proxy's rules)."""

from __future__ import annotations

import time

from helpers import endpoint, slice_

from nftproxy.k8s.cache import TRIGGER_ANNOTATION, Cache, trigger_time


def stamped(stamp: str) -> dict[str, object]:
    doc = slice_("svc", endpoint("10.1.0.1"))
    doc["metadata"]["annotations"] = {TRIGGER_ANNOTATION: stamp}
    return doc


def test_the_annotation_wins_else_the_arrival() -> None:
    assert trigger_time(stamped("2026-12-04T23:00:00.123456789Z"), 5.0) == 1796425200.123456
    assert trigger_time(stamped("yesterday"), 5.0) == 5.0  # unreadable: the arrival
    assert trigger_time(slice_("svc"), None) is None  # a list's item: not timed


def test_only_changes_after_the_start_of_the_cache_are_timed() -> None:
    cache = Cache("node-a")
    cache.put("EndpointSlice", [stamped("2020-01-01T00:00:00Z")])  # from before: not ours
    cache.event("EndpointSlice", "MODIFIED", slice_("svc", endpoint("10.1.0.2")))
    before = time.time()
    cache.event("EndpointSlice", "DELETED", slice_("svc"))
    _, changes = cache.take()
    assert len(changes.triggers) == 2
    assert changes.triggers[0] >= cache.started and changes.triggers[1] >= before
