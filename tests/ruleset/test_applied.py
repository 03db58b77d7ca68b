"""An index keeps owners' fragments from an older one, unless their place is claimed."""

from __future__ import annotations

import dataclasses
from typing import Any

from helpers import NODE, endpoint, service, slice_

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.nft.model import Family
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.applied import FamilyIndex

B = ("Service", "ns", "b")


def index_of(*docs: dict[str, Any]) -> FamilyIndex:
    loaded = Loaded()
    load_objects(iter(docs), "test", loaded)
    state = compute_state(loaded.objects, dataclasses.replace(NODE, zone="zone-a"))
    return next(FamilyIndex.of(fs) for fs in state.families if fs.node.family == Family.IP)


A = (service("a", clusterIP="172.30.0.10"), slice_("a", endpoint("10.1.0.1")))
B_DOCS = (service("b", clusterIP="172.30.0.11"), slice_("b", endpoint("10.1.0.2")))


def test_a_kept_owner_comes_from_the_old_index() -> None:
    old = index_of(*A, *B_DOCS)
    new = index_of(*A).keeping(old, {B})
    assert new.table() == old.table()
    assert (new.element_count(), new.chains) == (old.element_count(), old.chains)
    assert index_of(*A).keeping(None, {B}).table() == index_of(*A).table()


def test_what_the_new_index_gives_a_kept_owner_is_replaced() -> None:
    old = index_of(*A, *B_DOCS)
    moved = (service("b", clusterIP="172.30.0.11"), slice_("b", endpoint("10.1.0.9")))
    assert index_of(*A, *moved).keeping(old, {B}).table() == old.table()


def test_an_address_another_owner_claims_is_left_to_it() -> None:
    old = index_of(*A, *B_DOCS)
    claim = (service("c", clusterIP="172.30.0.11"), slice_("c", endpoint("10.1.0.3")))
    new = index_of(*A, *claim)
    assert new.keeping(old, {B}).table() == new.table()
