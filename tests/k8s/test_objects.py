"""Parsing API objects: valid ones become values, invalid ones name their field."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import endpoint, service, slice_

from nftproxy.k8s.objects import (
    EndpointSlice,
    Pod,
    Protocol,
    Service,
    parse_endpoint_slice,
    parse_object,
    parse_service,
)
from nftproxy.k8s.problems import InvalidObjectError


def _error_field(doc: dict[str, Any]) -> str:
    with pytest.raises(InvalidObjectError) as err:
        parse_object(doc)
    return err.value.field


class TestService:
    def test_defaults(self) -> None:
        """Protocol TCP, no nodePort, Cluster policies, no affinity."""
        svc = parse_service(service(ports=[{"port": 80}]))
        assert svc.ports[0].protocol == Protocol.TCP
        assert svc.ports[0].node_port is None and svc.ports[0].name == ""
        assert not svc.external_local and not svc.internal_local
        assert svc.affinity_timeout is None

    def test_port_out_of_range_names_the_field(self) -> None:
        """A port of 70000 is reported at spec.ports[0].port."""
        assert _error_field(service(ports=[{"port": 70000}])) == "spec.ports[0].port"

    def test_unparsable_cluster_ip_names_the_field(self) -> None:
        """clusterIP 300.1.1.1 is reported at spec.clusterIPs[0]."""
        assert _error_field(service(clusterIP="300.1.1.1")) == "spec.clusterIPs[0]"

    def test_bad_external_ip(self) -> None:
        assert _error_field(service(externalIPs=["1.2.3.4", "nope"])) == "spec.externalIPs[1]"

    def test_unknown_protocol(self) -> None:
        assert (
            _error_field(service(ports=[{"port": 1, "protocol": "ICMP"}]))
            == "spec.ports[0].protocol"
        )

    def test_headless(self) -> None:
        svc = parse_service(service(clusterIP="None"))
        assert svc.headless and svc.cluster_ips == ()

    def test_space_padded_source_ranges_are_trimmed(self) -> None:
        """' 203.0.113.0/25' is accepted, as the API server accepts it."""
        svc = parse_service(service(loadBalancerSourceRanges=[" 203.0.113.0/25", "10.0.0.1/8"]))
        assert [str(n) for n in svc.source_ranges] == ["203.0.113.0/25", "10.0.0.0/8"]

    def test_bad_source_range(self) -> None:
        doc = service(loadBalancerSourceRanges=["10.0.0.0/33"])
        assert _error_field(doc) == "spec.loadBalancerSourceRanges[0]"

    def test_affinity_timeout_default_and_custom(self) -> None:
        assert parse_service(service(sessionAffinity="ClientIP")).affinity_timeout == 10800
        custom = service(
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}
        )
        assert parse_service(custom).affinity_timeout == 60

    def test_affinity_timeout_out_of_range(self) -> None:
        doc = service(
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}
        )
        assert _error_field(doc) == "spec.sessionAffinityConfig.clientIP.timeoutSeconds"

    def test_load_balancer_ips_by_ip_mode(self) -> None:
        """Ingress IPs with ipMode Proxy are left to the load balancer."""
        doc = service(
            type="LoadBalancer",
            status={
                "loadBalancer": {
                    "ingress": [
                        {"ip": "1.1.1.1"},
                        {"ip": "2.2.2.2", "ipMode": "VIP"},
                        {"ip": "3.3.3.3", "ipMode": "Proxy"},
                        {"hostname": "lb.example"},
                    ]
                }
            },
        )
        assert [str(i) for i in parse_service(doc).load_balancer_ips] == ["1.1.1.1", "2.2.2.2"]

    def test_wrong_type_of_field(self) -> None:
        assert _error_field(service(ports="80")) == "spec.ports"

    def test_missing_name(self) -> None:
        doc = service()
        del doc["metadata"]["name"]
        assert _error_field(doc) == "metadata.name"


class TestEndpointSlice:
    def test_needs_the_service_name_label(self) -> None:
        doc = slice_("svc", endpoint("10.0.0.1"))
        del doc["metadata"]["labels"]
        assert _error_field(doc) == "metadata.labels[kubernetes.io/service-name]"

    def test_nil_conditions_mean_ready_and_serving(self) -> None:
        """The API reads nil ready/serving as true and nil terminating as false."""
        doc = slice_("svc", {"addresses": ["10.0.0.1"]})
        ep = parse_endpoint_slice(doc).endpoints[0]  # type: ignore[union-attr]
        assert ep.ready and ep.serving and not ep.terminating

    def test_topology_hints(self) -> None:
        hints = {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "n1"}, {"name": "n2"}]}
        doc = slice_("svc", {**endpoint("10.0.0.1"), "hints": hints}, endpoint("10.0.0.2"))
        one, two = parse_endpoint_slice(doc).endpoints  # type: ignore[union-attr]
        assert one.zone_hints == {"zone-a"} and one.node_hints == {"n1", "n2"}
        assert not two.zone_hints and not two.node_hints
        for bad, field in (
            ([], "endpoints[0].hints"),
            ({"forZones": {"name": "a"}}, "endpoints[0].hints.forZones"),
            ({"forNodes": [{"name": ""}]}, "endpoints[0].hints.forNodes[0].name"),
            ({"forZones": ["zone-a"]}, "endpoints[0].hints.forZones[0].name"),
        ):
            assert _error_field(slice_("svc", {**endpoint("10.0.0.1"), "hints": bad})) == field

    def test_fqdn_slices_are_not_proxied(self) -> None:
        assert parse_endpoint_slice(slice_("svc", family="FQDN")) is None

    def test_address_of_the_wrong_family(self) -> None:
        doc = slice_("svc", endpoint("2001:db8::1"))
        assert _error_field(doc) == "endpoints[0].addresses[0]"

    def test_nil_port_is_skipped(self) -> None:
        doc = slice_("svc", endpoint("10.0.0.1"), ports=[{"name": "p", "port": None}])
        parsed = parse_object(doc)
        assert isinstance(parsed, EndpointSlice) and parsed.ports == ()


class TestPod:
    def test_host_ports(self) -> None:
        doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "nodeName": "n",
                "containers": [
                    {
                        "name": "c",
                        "ports": [
                            {"containerPort": 80, "hostPort": 8080},
                            {
                                "containerPort": 53,
                                "hostPort": 53,
                                "protocol": "UDP",
                                "hostIP": "10.1.1.1",
                            },
                            {"containerPort": 9090},
                        ],
                    }
                ],
            },
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}]},
        }
        pod = parse_object(doc)
        assert isinstance(pod, Pod)
        assert [(h.host_port, h.container_port, h.protocol) for h in pod.host_ports] == [
            (8080, 80, Protocol.TCP),
            (53, 53, Protocol.UDP),
        ]
        assert pod.host_ports[1].host_ip == "10.1.1.1"
        assert pod.pod_ips == ("10.0.0.5",)


def test_other_kinds_are_refused() -> None:
    assert _error_field({"kind": "ConfigMap", "metadata": {"name": "x"}}) == "kind"


def test_parse_object_dispatches() -> None:
    assert isinstance(parse_object(service()), Service)
