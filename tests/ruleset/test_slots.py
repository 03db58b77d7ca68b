"""Endpoints keep their slots: one endpoint changed is one backends element."""

from __future__ import annotations

from collections import Counter
from typing import Any

from helpers import endpoint, service, slice_, state_of
from hypothesis import given
from hypothesis import strategies as st

from nftproxy.nft.model import Element, Family, Table
from nftproxy.nft.transaction import AddElements, DeleteElements, DeleteSet
from nftproxy.ruleset.build import build
from nftproxy.ruleset.slots import Slots, aligned, is_backend_map
from nftproxy.sync.apply import desired_tables, plan_all

NODE_PORT = [{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30080}]


def _tables(addrs: list[str]) -> dict[Family, Table | None]:
    """Service svc (ClusterIP and NodePort) with addrs."""
    docs: list[dict[str, Any]] = [
        service(type="NodePort", ports=NODE_PORT),
        slice_("svc", *(endpoint(a) for a in addrs)),
    ]
    return desired_tables(build(state_of(*docs)))


def _backend_changes(new: list[str], old: list[str]) -> Counter[str]:
    """Backends elements deleted and added by the plan from old to new endpoints."""
    out: Counter[str] = Counter()
    for tx in plan_all(_tables(new), _tables(old)):
        for c in tx.changes:
            if isinstance(c, (AddElements, DeleteElements)) and is_backend_map(c.set.name):
                out[type(c).__name__] += len(c.elements)
            elif isinstance(c, DeleteSet) and is_backend_map(c.name):
                out[f"DeleteSet {c.name}"] += 1
    return out


FIFTY = [f"10.1.0.{i}" for i in range(10, 60)]


def test_a_replaced_endpoint_is_one_element_per_entry() -> None:
    """The first endpoint replaced by one that sorts last: the ClusterIP and the
    NodePort entry each change one element, not fifty."""
    assert _backend_changes(["10.9.0.1", *FIFTY[1:]], FIFTY) == {
        "DeleteElements": 2,
        "AddElements": 2,
    }


def test_a_new_endpoint_count_moves_the_entries_to_its_map() -> None:
    """One endpoint fewer or more: the Service's entries leave backends-50 (here
    its only user, so the map goes) for backends-49 or backends-51 (a map per
    count, see build.backend_map)."""
    assert _backend_changes(FIFTY[:20] + FIFTY[21:], FIFTY) == {
        "DeleteSet backends-50": 1,
        "AddElements": 2 * 49,
    }
    assert _backend_changes([*FIFTY, "10.0.0.1"], FIFTY) == {
        "DeleteSet backends-50": 1,
        "AddElements": 2 * 51,
    }


def _elements(eps: list[str]) -> tuple[Element, ...]:
    return tuple(
        Element(("172.30.0.10", "tcp", "80", str(i)), (ep, "80")) for i, ep in enumerate(eps)
    )


@given(
    st.lists(st.integers(0, 40), unique=True, max_size=30),
    st.lists(st.integers(0, 40), unique=True, max_size=30),
)
def test_aligned_numbers_every_endpoint_once_and_keeps_what_it_can(
    before: list[int], after: list[int]
) -> None:
    old = _elements([f"10.0.0.{i}" for i in before])
    new = _elements([f"10.0.0.{i}" for i in sorted(after)])
    held: Slots = {
        ("backends-9", ("172.30.0.10", "tcp", "80")): {
            e.value: int(e.key[-1]) for e in old if e.value
        }
    }
    out = aligned("backends-9", new, held)
    assert sorted(int(e.key[-1]) for e in out) == list(range(len(new)))
    assert sorted(e.value for e in out if e.value) == sorted(e.value for e in new if e.value)
    kept = {e.value: e.key[-1] for e in old}
    moved = [e for e in out if e.value in kept and kept[e.value] != e.key[-1]]
    # Only endpoints whose slot no longer exists move.
    assert all(int(kept[e.value]) >= len(new) for e in moved if e.value)
