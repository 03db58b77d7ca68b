"""Kubernetes semantics: which entries exist and which endpoints each traffic kind uses."""

from __future__ import annotations

import dataclasses

from helpers import NODE, endpoint, host_port_pod, service, slice_, state_of

from nftproxy.nft.model import Family
from nftproxy.proxy.state import EntryKind, ProxyState, ServicePort


def _ports(state: ProxyState, family: Family = Family.IP) -> list[ServicePort]:
    return list(next(f for f in state.families if f.node.family == family).service_ports)


def _eps(group: tuple[object, ...]) -> list[str]:
    return [str(e.addr) for e in group]  # type: ignore[attr-defined]


class TestIgnoredServices:
    def test_headless_external_name_and_other_proxies(self) -> None:
        """They get no Service port, and each gets a note saying why."""
        state = state_of(
            service("headless", clusterIP="None"),
            service("ext", type="ExternalName", clusterIP=None, externalName="x.example"),
            service("other", labels={"service.kubernetes.io/service-proxy-name": "kube-router"}),
            service("ours", labels={"service.kubernetes.io/service-proxy-name": "nftproxy"}),
        )
        assert [sp.name.name for sp in _ports(state)] == ["ours"]
        notes = sorted(p.obj for p in state.problems if p.note)
        assert notes == ["Service ns/ext", "Service ns/headless", "Service ns/other"]

    def test_slice_of_an_unknown_service_is_reported(self) -> None:
        state = state_of(slice_("ghost", endpoint("10.0.0.1")))
        assert [p.obj for p in state.problems] == ["EndpointSlice ns/ghost-1"]
        assert not state.problems[0].note


class TestEndpointGroups:
    def test_ready_endpoints_win_over_terminating(self) -> None:
        state = state_of(
            service(),
            slice_(
                "svc",
                endpoint("10.1.0.1"),
                endpoint("10.1.0.2", ready=False, serving=True, terminating=True),
            ),
        )
        assert _eps(_ports(state)[0].cluster_endpoints) == ["10.1.0.1"]

    def test_serving_terminating_fallback(self) -> None:
        """No ready endpoint: the serving terminating ones; never non-serving ones."""
        state = state_of(
            service(),
            slice_(
                "svc",
                endpoint("10.1.0.1", ready=False, serving=False, terminating=True),
                endpoint("10.1.0.2", ready=False, serving=True, terminating=True),
            ),
        )
        assert _eps(_ports(state)[0].cluster_endpoints) == ["10.1.0.2"]

    def test_local_group_falls_back_on_its_own(self) -> None:
        """A ready remote endpoint does not keep the local group from a terminating local one."""
        state = state_of(
            service(),
            slice_(
                "svc",
                endpoint("10.1.0.1", node="other"),
                endpoint("10.1.0.2", node="node-a", ready=False, serving=True, terminating=True),
            ),
        )
        sp = _ports(state)[0]
        assert _eps(sp.cluster_endpoints) == ["10.1.0.1"]
        assert _eps(sp.local_endpoints) == ["10.1.0.2"]

    def test_internal_traffic_policy_local(self) -> None:
        state = state_of(
            service(internalTrafficPolicy="Local"),
            slice_("svc", endpoint("10.1.0.1", node="other"), endpoint("10.1.0.2", node="node-a")),
        )
        assert _eps(_ports(state)[0].internal_endpoints) == ["10.1.0.2"]

    def test_slices_are_merged_and_ports_matched_by_name_and_protocol(self) -> None:
        state = state_of(
            service(
                ports=[{"name": "a", "port": 80}, {"name": "a", "port": 80, "protocol": "UDP"}]
            ),
            slice_(
                "svc",
                endpoint("10.1.0.1"),
                name="s1",
                ports=[{"name": "a", "port": 8080, "protocol": "TCP"}],
            ),
            slice_(
                "svc",
                endpoint("10.1.0.2"),
                name="s2",
                ports=[{"name": "a", "port": 5353, "protocol": "UDP"}],
            ),
        )
        tcp, udp = _ports(state)
        assert [(str(e.addr), e.port) for e in tcp.cluster_endpoints] == [("10.1.0.1", 8080)]
        assert [(str(e.addr), e.port) for e in udp.cluster_endpoints] == [("10.1.0.2", 5353)]

    def test_external_policy_needs_an_external_type(self) -> None:
        """externalTrafficPolicy Local means nothing to a ClusterIP Service."""
        sp = _ports(state_of(service(externalTrafficPolicy="Local")))[0]
        assert not sp.external_local


class TestEntries:
    def test_node_ports_on_the_primary_ip_by_default(self) -> None:
        sp = _ports(state_of(service(type="NodePort", ports=[{"port": 80, "nodePort": 30001}])))[0]
        nodeports = [(str(e.addr), e.port) for e in sp.entries if e.kind == EntryKind.NODE_PORT]
        assert nodeports == [("192.168.0.2", 30001)]

    def test_node_port_addresses_cidrs_all_and_other_family(self) -> None:
        for selectors, want in (
            (("192.168.1.0/24", "2001:db8::/64"), ["192.168.1.2"]),
            (("all",), ["192.168.0.2", "192.168.1.2"]),
            (("primary", "192.168.0.0/16"), ["192.168.0.2", "192.168.1.2"]),
        ):
            node = dataclasses.replace(NODE, nodeport_addresses=selectors)
            doc = service(type="NodePort", ports=[{"port": 80, "nodePort": 30001}])
            sp = _ports(state_of(doc, node=node))[0]
            got = [str(e.addr) for e in sp.entries if e.kind == EntryKind.NODE_PORT]
            assert got == want, selectors

    def test_source_ranges_admit_lb_ips_when_they_admit_the_node(self) -> None:
        doc = service(
            type="LoadBalancer",
            loadBalancerSourceRanges=["192.168.0.0/24"],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
        )
        sp = _ports(state_of(doc))[0]
        assert [str(r) for r in sp.source_ranges] == ["192.168.0.0/24", "1.2.3.4/32"]

    def test_dual_stack_service_is_in_both_families(self) -> None:
        doc = service(clusterIPs=["172.30.0.10", "fd00:30::10"])
        state = state_of(doc, slice_("svc", endpoint("fd00:10::1"), family="IPv6"))
        v4, v6 = _ports(state, Family.IP)[0], _ports(state, Family.IP6)[0]
        assert [str(e.addr) for e in v4.entries] == ["172.30.0.10"]
        assert [str(e.addr) for e in v6.entries] == ["fd00:30::10"]
        assert v4.cluster_endpoints == () and _eps(v6.cluster_endpoints) == ["fd00:10::1"]

    def test_a_service_address_wins_over_a_node_port(self) -> None:
        """An externalIP on the node's address and port beats another Service's NodePort."""
        state = state_of(
            service("a", externalIPs=["192.168.0.2"], ports=[{"port": 30001}]),
            service(
                "b",
                clusterIP="172.30.0.11",
                type="NodePort",
                ports=[{"port": 80, "nodePort": 30001}],
            ),
        )
        a, b = _ports(state)
        assert any(e.kind == EntryKind.EXTERNAL_IP for e in a.entries)
        assert not any(e.kind == EntryKind.NODE_PORT for e in b.entries)
        assert [p.obj for p in state.problems] == ["ns/b/tcp"]

    def test_host_ports_of_running_local_pods(self) -> None:
        pod = host_port_pod()
        sp = _ports(state_of(pod))[0]
        assert str(sp.name) == "ns/web/tcp/hostport-8080"
        assert [(str(e.addr), e.port) for e in sp.entries] == [
            ("192.168.0.2", 8080),
            ("192.168.1.2", 8080),
        ]
        assert [(str(e.addr), e.port) for e in sp.cluster_endpoints] == [("10.0.0.5", 80)]
        elsewhere = dict(pod, spec=dict(pod["spec"], nodeName="node-b"))
        assert _ports(state_of(elsewhere)) == []


def test_family_node_settings() -> None:
    v6 = NODE.family(Family.IP6)
    assert v6.primary == "2001:db8::2"
    assert v6.pod_cidrs == () and v6.nodeport_ips == ("2001:db8::2",)


def test_hairpin_candidates_are_the_endpoints_that_may_run_here() -> None:
    """This node's endpoints and those placed nowhere can reach themselves through the
    Service here; another node's cannot, and get no hairpin element."""
    state = state_of(
        service(),
        slice_(
            "svc",
            endpoint("10.1.0.1", node="node-a"),
            endpoint("10.1.0.2"),
            endpoint("10.1.0.3", node="node-b"),
            endpoint("10.1.0.4", node="node-a", ready=False, serving=False),
        ),
    )
    (sp,) = _ports(state)
    assert list(sp.hairpin) == ["10.1.0.1", "10.1.0.2"]
