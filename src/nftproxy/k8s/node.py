"""The Node and ServiceCIDR objects, reduced to what the proxy uses."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nftproxy.k8s.objects import IPAddress, IPNetwork, get_field, get_list, label_of
from nftproxy.k8s.problems import InvalidObjectError

ZONE_LABEL = "topology.kubernetes.io/zone"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


@dataclass(frozen=True)
class NodeInfo:
    """This node as the API server describes it.

    ``ips``: InternalIP addresses, then ExternalIP ones (the first of each family
    is the primary, as kube-proxy's ``GetNodeHostIPs``). ``eligible`` is False
    while the node is being deleted or tainted ``ToBeDeletedByClusterAutoscaler``.
    """

    name: str
    ips: tuple[IPAddress, ...]
    pod_cidrs: tuple[IPNetwork, ...]
    zone: str | None
    eligible: bool


def parse_node(raw: Mapping[str, Any]) -> NodeInfo:
    """Parse a v1 Node."""
    ips: list[IPAddress] = []
    for wanted in ("InternalIP", "ExternalIP"):
        for i, a in enumerate(get_list(raw, "status.addresses")):
            if isinstance(a, Mapping) and a.get("type") == wanted:
                ips.append(_ip(a.get("address"), f"status.addresses[{i}].address"))
    pod_cidr = get_field(raw, "spec.podCIDR", str)
    cidrs = get_list(raw, "spec.podCIDRs") or ([pod_cidr] if pod_cidr else [])
    taints = [t for t in get_list(raw, "spec.taints") if isinstance(t, Mapping)]
    return NodeInfo(
        name=get_field(raw, "metadata.name", str, ""),
        ips=tuple(dict.fromkeys(ips)),
        pod_cidrs=tuple(_cidr(c, f"spec.podCIDRs[{i}]") for i, c in enumerate(cidrs)),
        zone=label_of(get_field(raw, "metadata.labels", dict, {}), ZONE_LABEL),
        eligible=not get_field(raw, "metadata.deletionTimestamp", str)
        and not any(t.get("key") == TO_BE_DELETED_TAINT for t in taints),
    )


def service_cidrs(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The ranges of a networking.k8s.io/v1 ServiceCIDR."""
    cidrs = get_list(raw, "spec.cidrs")
    for i, c in enumerate(cidrs):
        _cidr(c, f"spec.cidrs[{i}]")
    return tuple(str(c) for c in cidrs)


def _ip(text: Any, field: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise InvalidObjectError(field, f"not an IP address: {text!r}") from None


def _cidr(text: Any, field: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError:
        raise InvalidObjectError(field, f"not a CIDR: {text!r}") from None
