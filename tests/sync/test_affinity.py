"""Which clients' affinity a sync forgets: the endpoints whose rules it removed."""

from __future__ import annotations

from typing import Any

from helpers import endpoint, service, slice_, state_of

from nftproxy.nft.model import Family, Table
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build
from nftproxy.sync.affinity import forgotten, recorded
from nftproxy.sync.apply import desired_tables

STICKY = service(
    type="NodePort",
    sessionAffinity="ClientIP",
    externalTrafficPolicy="Local",
    ports=[{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30080}],
)


def _tables(*docs: dict[str, Any]) -> dict[Family, Table | None]:
    return desired_tables(build(state_of(*docs)))


def _id(addr: str) -> str:
    return str(names.endpoint_id(addr, 8080))


def _set_of(tables: dict[Family, Table | None]) -> str:
    table = tables[Family.IP]
    assert table is not None
    (name,) = recorded(table.chains)
    return name


def test_an_endpoint_removed_is_forgotten() -> None:
    before = _tables(STICKY, slice_("svc", *(endpoint(a) for a in ("10.1.0.1", "10.1.0.2"))))
    after = _tables(STICKY, slice_("svc", endpoint("10.1.0.1")))
    assert forgotten(before, after, None) == {Family.IP: {_set_of(after): {_id("10.1.0.2")}}}


def test_only_the_changed_chains_are_looked_at() -> None:
    before = _tables(STICKY, slice_("svc", *(endpoint(a) for a in ("10.1.0.1", "10.1.0.2"))))
    after = _tables(STICKY, slice_("svc", endpoint("10.1.0.1")))
    assert forgotten(before, after, {"some-other-chain"}) == {}


def test_a_deleted_service_leaves_nothing_to_forget() -> None:
    """Its set goes with it."""
    before = _tables(STICKY, slice_("svc", endpoint("10.1.0.1")))
    after = _tables(service("other"), slice_("other", endpoint("10.1.0.9")))
    assert forgotten(before, after, None) == {}


def test_an_endpoint_another_chain_still_records_is_kept() -> None:
    """A local endpoint that starts terminating leaves the cluster chain (other
    endpoints are ready) but stays in the local chain (the terminating fallback):
    both chains share the Service port's set, so its clients stay."""
    local = endpoint("10.1.0.2", node="node-a")
    terminating = endpoint("10.1.0.2", node="node-a", ready=False, serving=True, terminating=True)
    before = _tables(STICKY, slice_("svc", endpoint("10.1.0.1", node="node-b"), local))
    after = _tables(STICKY, slice_("svc", endpoint("10.1.0.1", node="node-b"), terminating))
    table = after[Family.IP]
    assert table is not None
    assert len([c for c in table.chains if c.name.startswith("sticky")]) == 2
    assert forgotten(before, after, None) == {}
