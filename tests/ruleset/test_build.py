"""The ruleset shape: per-Service state in map elements, a fixed set of chains."""

from __future__ import annotations

from typing import Any

from helpers import endpoint, host_port_pod, service, slice_, state_of

from nftproxy.nft.model import Element, Family, Table
from nftproxy.nft.render import render_rule
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build


def _table(*docs: dict[str, Any]) -> Table:
    return build(state_of(*docs)).tables[0]


def _elements(table: Table, name: str) -> list[Element]:
    """The elements of a set (none when the table has no such set)."""
    return [e for s in table.sets if s.name == name for e in s.elements]


def _cluster(n: int, endpoints: int = 3, **spec: Any) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i in range(n):
        docs.append(service(f"s{i}", clusterIP=f"172.30.{i // 250}.{i % 250 + 1}", **spec))
        docs.append(
            slice_(f"s{i}", *[endpoint(f"10.{i // 250}.{i % 250}.{j}") for j in range(endpoints)])
        )
    return docs


class TestShape:
    def test_chains_and_sets_do_not_grow_with_services(self) -> None:
        """10 or 300 Services with 3 endpoints each: the same chains and sets, only
        more elements."""
        small, large = _table(*_cluster(10)), _table(*_cluster(300))
        assert [c.name for c in small.chains] == [c.name for c in large.chains]
        assert [s.name for s in small.sets] == [s.name for s in large.sets]
        assert len(_elements(large, "backends-3")) == 900
        assert len(_elements(large, names.SERVICE_IPS)) == 300

    def test_a_backends_map_per_endpoint_count(self) -> None:
        """Services with 2 and with 3 endpoints: maps backends-2 and backends-3, each
        used by its pick chain."""
        table = _table(*_cluster(2))
        two = _table(*_cluster(1, endpoints=2))
        assert [s.name for s in table.sets if s.name.startswith("backends-")] == ["backends-3"]
        assert [s.name for s in two.sets if s.name.startswith("backends-")] == ["backends-2"]
        (pick,) = [c for c in two.chains if c.name == "pick-2"]
        assert "@backends-2" in render_rule(pick.rules[0], Family.IP)

    def test_no_set_per_service_without_affinity(self) -> None:
        table = _table(*_cluster(50))
        assert not [s for s in table.sets if s.name.startswith("affinity-")]

    def test_affinity_gets_a_chain_and_a_set_per_service_port(self) -> None:
        """One set per Service port, not per endpoint: the kernel looks sets up by
        name in a list, so loading n sets costs n^2."""
        table = _table(*_cluster(2, sessionAffinity="ClientIP"))
        sticky = [c for c in table.chains if c.name.startswith("sticky-")]
        affinity = [s for s in table.sets if s.name.startswith("affinity-")]
        assert len(sticky) == 2 and len(affinity) == 2
        assert all(s.timeout == 10800 and s.dynamic for s in affinity)
        assert not [s for s in table.sets if s.name.startswith("backends-")]


class TestVerdicts:
    def test_no_endpoints_rejects(self) -> None:
        table = _table(service())
        assert [e.value for e in _elements(table, names.NO_ENDPOINT_SERVICES)] == [
            ("goto", names.REJECT)
        ]
        assert not _elements(table, names.SERVICE_IPS)

    def test_local_policy_without_local_endpoints_drops(self) -> None:
        table = _table(
            service(internalTrafficPolicy="Local"),
            slice_("svc", endpoint("10.1.0.1", node="elsewhere")),
        )
        assert [e.value for e in _elements(table, names.NO_ENDPOINT_SERVICES)] == [("drop",)]

    def test_external_local_without_local_endpoints(self) -> None:
        """The NodePort still short-circuits pods and the node; others are dropped."""
        table = _table(
            service(
                type="NodePort",
                externalTrafficPolicy="Local",
                ports=[{"name": "p", "port": 80, "nodePort": 30001}],
            ),
            slice_("svc", endpoint("10.1.0.1", node="elsewhere")),
        )
        verdicts = {e.key: e.value for e in _elements(table, names.SERVICE_IPS)}
        assert verdicts[("192.168.0.2", "tcp", "30001")] == ("goto", "external-local/pick-1/none")
        assert [e.key for e in _elements(table, names.NO_ENDPOINT_SERVICES)] == [
            ("192.168.0.2", "tcp", "30001")
        ]

    def test_firewall_elements(self) -> None:
        table = _table(
            service(
                type="LoadBalancer",
                loadBalancerSourceRanges=["203.0.113.0/25"],
                ports=[{"name": "p", "port": 80, "nodePort": 30001}],
                status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
            ),
            slice_("svc", endpoint("10.1.0.1")),
        )
        assert [e.key for e in _elements(table, names.FIREWALL_IPS)] == [("1.2.3.4", "tcp", "80")]
        assert [e.key for e in _elements(table, names.FIREWALL_ALLOW)] == [
            ("1.2.3.4", "tcp", "80", "203.0.113.0/25")
        ]

    def test_hairpin_pairs_every_endpoint_with_itself(self) -> None:
        table = _table(*_cluster(1, endpoints=2))
        assert [e.key for e in _elements(table, names.HAIRPIN)] == [
            ("10.0.0.0", "10.0.0.0"),
            ("10.0.0.1", "10.0.0.1"),
        ]


def test_families_without_services_are_removed() -> None:
    """The IPv6 table is listed as absent so that loading removes a stale one."""
    ruleset = build(state_of(*_cluster(1)))
    assert [t.family.value for t in ruleset.tables] == ["ip"]
    assert [f.value for f in ruleset.absent] == ["ip6"]


def test_only_service_entries_are_counted() -> None:
    """A Pod's hostPort entry is served (service-ips) but not counted: the per-Service
    traffic series are named by comment, and a Pod named as a Service would join it."""
    pod = host_port_pod("web", pod_ip="10.0.0.5")
    table = _table(service("web"), slice_("web", endpoint("10.1.0.1")), pod)
    served = {e.comment for e in _elements(table, names.SERVICE_IPS)}
    counted = {e.comment for e in _elements(table, names.SERVICE_COUNTERS)}
    assert served == {"ns/web/tcp/p", "ns/web/tcp/hostport-8080"}
    assert counted == {"ns/web/tcp/p"}
