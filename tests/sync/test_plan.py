"""plan(desired, current): the smallest transaction, by meaning. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

from helpers import endpoint, service, slice_, state_of

from nftproxy.nft.model import Chain, Element, Family, Rule, Set, Table, Verdict, VerdictKind
from nftproxy.nft.render import render_transaction
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
)
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build
from nftproxy.sync.plan import plan, summarize


def _table(*docs: dict[str, Any]) -> Table:
    return build(state_of(*docs)).tables[0]


def _plan(want: Table | None, have: Table | None) -> list[object]:
    return list(plan(want, have, Family.IP, names.TABLE).changes)


BASE = [service(), slice_("svc", endpoint("10.1.0.1"), endpoint("10.1.0.2"))]


class TestPlan:
    def test_same_state_needs_nothing(self) -> None:
        assert _plan(_table(*BASE), _table(*BASE)) == []

    def test_empty_kernel_gets_everything(self) -> None:
        changes = _plan(_table(*BASE), None)
        assert isinstance(changes[0], AddTable)
        assert summarize(plan(_table(*BASE), None, Family.IP, "t")).added > 10

    def test_absent_desired_deletes_the_table(self) -> None:
        assert _plan(None, _table(*BASE)) == [DeleteTable()]
        assert _plan(None, None) == []

    def test_one_endpoint_changed_touches_its_elements_only(self) -> None:
        """A changed endpoint: its backends element changes, its hairpin pair swaps."""
        new = _table(service(), slice_("svc", endpoint("10.1.0.1"), endpoint("10.1.0.3")))
        changes = _plan(new, _table(*BASE))
        assert {type(c) for c in changes} == {DeleteElements, AddElements}
        tx = plan(new, _table(*BASE), Family.IP, "t")
        assert str(summarize(tx)) == "1 added, 1 changed, 1 removed"

    def test_endpoint_count_change_rewires_the_entry(self) -> None:
        """Going from 2 to 3 endpoints points the entry at another shared chain."""
        more = _table(service(), slice_("svc", *[endpoint(f"10.1.0.{i}") for i in (1, 2, 3)]))
        text = render_transaction(plan(more, _table(*BASE), Family.IP, names.TABLE))
        assert "add chain ip nftproxy pick-3" in text
        assert "delete chain ip nftproxy pick-2" in text
        assert "goto clusterip/pick-3" in text

    def test_foreign_objects_are_removed(self) -> None:
        have = _table(*BASE)
        foreign = Chain("intruder", (Rule((Verdict(VerdictKind.DROP),)),))
        extra = Set("extra", have.sets[0].key)
        polluted = dataclasses.replace(
            have, chains=(*have.chains, foreign), sets=(*have.sets, extra)
        )
        changes = _plan(have, polluted)
        assert FlushChain("intruder") in changes and DeleteChain("intruder") in changes
        assert DeleteSet("extra") in changes

    def test_changed_rules_rewrite_the_chain(self) -> None:
        want = _table(*BASE)
        chains = tuple(
            dataclasses.replace(c, rules=c.rules[:1]) if c.name == "masquerading" else c
            for c in want.chains
        )
        changes = _plan(want, dataclasses.replace(want, chains=chains))
        assert changes[0] == FlushChain("masquerading")
        assert len(changes) == 1 + 4  # flush, then the chain's four rules

    def test_set_definition_change_recreates_the_set_and_its_users(self) -> None:
        """A new affinity timeout: the set is replaced, and the sticky chain, whose
        comment names the timeout, is made anew with the class chain that jumps to it."""
        sticky = [service(sessionAffinity="ClientIP"), BASE[1]]
        shorter = [
            service(
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
            ),
            BASE[1],
        ]
        changes = _plan(_table(*shorter), _table(*sticky))
        flushed = [c.name for c in changes if isinstance(c, FlushChain)]
        assert sorted(n.split("-")[0] for n in flushed) == ["clusterip/sticky", "sticky"]
        sticky_chain = next(n for n in flushed if n.startswith("sticky-"))
        assert DeleteChain(sticky_chain) in changes
        added = next(c.chain for c in changes if isinstance(c, AddChain))
        assert added.name == sticky_chain and added.comment == "ns/svc/tcp/p: ClientIP affinity 60s"
        assert len([c for c in changes if isinstance(c, DeleteSet)]) == 1
        assert [c.set.timeout for c in changes if isinstance(c, AddSet)] == [60]

    def test_elements_of_dynamic_sets_are_left_alone(self) -> None:
        want = _table(service(sessionAffinity="ClientIP"), BASE[1])
        sets = tuple(
            dataclasses.replace(s, elements=(Element(("10.0.0.9", "7")),))
            if s.name.startswith("affinity-")
            else s
            for s in want.sets
        )
        assert _plan(want, dataclasses.replace(want, sets=sets)) == []
