"""A Service invalid since the start is held at what the last process kept for it."""

from __future__ import annotations

from typing import Any

from helpers import endpoint, service, slice_

from nftproxy.k8s.cache import Cache

BAD = ("Service", "ns", "bad")


def _versioned(doc: dict[str, Any], version: str) -> dict[str, Any]:
    doc["metadata"]["resourceVersion"] = version
    return doc


def _invalid(version: str) -> dict[str, Any]:
    doc = service("bad", clusterIP="172.30.0.20", ports=[{"name": "p", "port": 70000}])
    return _versioned(doc, version)


def _restarted(kept: dict[tuple[str, str, str], str]) -> tuple[Cache, list[int]]:
    """A cache after a restart's first lists (bad's Service invalid), settled."""
    woken: list[int] = []
    cache = Cache("node-a", on_change=lambda: woken.append(1))
    cache.put("Service", [_invalid("2"), _versioned(service("ok"), "3")])
    cache.put("EndpointSlice", [_versioned(slice_("bad", endpoint("10.1.0.1")), "4")])
    cache.settle(kept)
    return cache, woken


def test_it_is_held_and_its_changes_are_put_off() -> None:
    cache, _ = _restarted({BAD: "1,bad-1=4"})
    assert cache.held_owners() == {BAD}
    _, changes = cache.take()
    assert changes.services == {("ns", "ok")}  # bad's: put off
    cache.event("EndpointSlice", "MODIFIED", _versioned(slice_("bad", endpoint("10.1.0.2")), "5"))
    assert not cache.take()[1].services
    assert cache.fingerprints()[BAD] == "1,bad-1=4"  # kept for the next restart


def test_a_valid_version_builds_it_again() -> None:
    cache, _ = _restarted({BAD: "1,bad-1=4"})
    cache.take()
    cache.event("Service", "MODIFIED", _versioned(service("bad", clusterIP="172.30.0.20"), "6"))
    assert cache.held_owners() == frozenset()
    assert cache.take()[1].services == {("ns", "bad")}


def test_deleted_it_goes() -> None:
    cache, woken = _restarted({BAD: "1,bad-1=4"})
    cache.take()
    before = len(woken)
    cache.event("Service", "DELETED", _invalid("7"))
    assert len(woken) == before + 1  # the loop is woken for it
    assert cache.take()[1].services == {("ns", "bad")}


def test_nothing_kept_nothing_held() -> None:
    cache, _ = _restarted({})
    assert cache.held_owners() == frozenset()
    assert ("ns", "bad") in cache.take()[1].services  # built without its Service: nothing
