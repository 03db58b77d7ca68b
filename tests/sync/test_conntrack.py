"""Which UDP/SCTP flows a sync makes stale: from the rules applied and wanted. Pure."""

from __future__ import annotations

from typing import Any

from helpers import endpoint, service, slice_, state_of

from nftproxy.nft.conntrack import plan_stale
from nftproxy.proxy.state import serving_flows
from nftproxy.ruleset.build import build
from nftproxy.sync.apply import desired_tables
from nftproxy.sync.reach import reach_all

UDP = [{"name": "dns", "port": 53, "protocol": "UDP"}]
SLICE_UDP = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
ENTRY = ("udp", "172.30.0.10", 53)


def reach_of(
    *eps: dict[str, Any], **spec: Any
) -> dict[tuple[str, str, int], frozenset[tuple[str, int]]]:
    state = state_of(service(ports=UDP, **spec), slice_("svc", *eps, ports=SLICE_UDP))
    return reach_all(desired_tables(build(state)))


class TestReach:
    def test_a_udp_entry_reaches_its_endpoints(self) -> None:
        reached = reach_of(endpoint("10.1.0.1"), endpoint("10.1.0.2"))
        assert reached == {ENTRY: {("10.1.0.1", 5353), ("10.1.0.2", 5353)}}

    def test_a_sticky_entry_reaches_the_endpoints_of_its_own_chain(self) -> None:
        reached = reach_of(endpoint("10.1.0.1"), sessionAffinity="ClientIP")
        assert reached == {ENTRY: {("10.1.0.1", 5353)}}

    def test_tcp_entries_and_entries_without_endpoints_are_left_out(self) -> None:
        assert reach_of() == {}
        state = state_of(service(), slice_("svc", endpoint("10.1.0.1")))
        assert reach_all(desired_tables(build(state))) == {}


class TestPlanStale:
    def test_unchanged_entries_make_nothing_stale(self) -> None:
        before = reach_of(endpoint("10.1.0.1"))
        assert not plan_stale(before, before, {})

    def test_a_removed_endpoint_is_stale_and_the_others_stay(self) -> None:
        before = reach_of(endpoint("10.1.0.1"), endpoint("10.1.0.2"))
        after = reach_of(endpoint("10.1.0.2"))
        plan = plan_stale(before, after, {})
        assert plan.is_stale(ENTRY, ("10.1.0.1", 5353))
        assert not plan.is_stale(ENTRY, ("10.1.0.2", 5353))

    def test_a_serving_terminating_endpoint_keeps_its_flows(self) -> None:
        before = reach_of(endpoint("10.1.0.1"), endpoint("10.1.0.2"))
        terminating = endpoint("10.1.0.1", ready=False, serving=True, terminating=True)
        state = state_of(
            service(ports=UDP), slice_("svc", terminating, endpoint("10.1.0.2"), ports=SLICE_UDP)
        )
        after = reach_all(desired_tables(build(state)))
        plan = plan_stale(before, after, serving_flows(state))
        assert plan and not plan.is_stale(ENTRY, ("10.1.0.1", 5353))

    def test_a_deleted_service_makes_every_flow_of_its_entries_stale(self) -> None:
        plan = plan_stale(reach_of(endpoint("10.1.0.1")), {}, {})
        assert plan.is_stale(ENTRY, ("10.1.0.1", 5353))

    def test_flows_never_dnated_go_when_endpoints_appear(self) -> None:
        """While the Service had none, datagrams were refused; the flow goes."""
        plan = plan_stale({}, reach_of(endpoint("10.1.0.1")), {})
        assert plan.is_stale(ENTRY, ("172.30.0.10", 53))

    def test_other_entries_are_never_touched(self) -> None:
        plan = plan_stale(reach_of(endpoint("10.1.0.1")), {}, {})
        assert not plan.is_stale(("udp", "172.30.0.99", 53), ("10.9.9.9", 1))
