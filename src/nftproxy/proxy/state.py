"""Kubernetes semantics: objects and node settings in, ``ProxyState`` out. Pure.

Everything kube-proxy decides about which addresses a Service answers on and
which endpoints each kind of traffic may reach is decided here, once:
ignored Services (headless, ExternalName, another proxy's), the entries
(ClusterIP, externalIPs, LoadBalancer IPs, NodePorts, hostPorts), the endpoint
groups for Cluster and Local traffic policy with the terminating fallback,
session affinity and loadBalancerSourceRanges. The rule builder only renders it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from nftproxy.k8s.objects import (
    Addr,
    EndpointSlice,
    IPNetwork,
    Pod,
    Protocol,
    Service,
    ServicePortSpec,
    SliceEndpoint,
    Sourced,
    addr_key,
    addr_version,
    is_loopback,
)
from nftproxy.k8s.problems import Problem
from nftproxy.nft.model import Family
from nftproxy.settings.node import FamilyNode, NodeConfig

PROXY_NAME = "nftproxy"
"""Services labelled service.kubernetes.io/service-proxy-name with another value are skipped."""


class EntryKind(StrEnum):
    """How traffic reaches a Service: the kind of address and port it was sent to."""

    CLUSTER_IP = "clusterIP"
    EXTERNAL_IP = "externalIP"
    LOAD_BALANCER = "loadBalancer"
    NODE_PORT = "nodePort"
    HOST_PORT = "hostPort"


class Entry(NamedTuple):
    """One address and port on which a Service port accepts traffic."""

    addr: Addr
    port: int
    kind: EntryKind

    @property
    def external(self) -> bool:
        """Traffic policy "external" applies (everything but the ClusterIP)."""
        return self.kind != EntryKind.CLUSTER_IP


class Endpoint(NamedTuple):
    """One usable backend: address, port, and whether it runs on this node."""

    addr: Addr
    port: int
    local: bool


@dataclass(frozen=True, order=True)
class ServicePortName:
    """Identifies one port of one Service (or one hostPort of one Pod)."""

    namespace: str
    name: str
    protocol: Protocol
    port: str

    def __str__(self) -> str:
        """``namespace/name/protocol/port-name`` (without ``/port-name`` for an unnamed port)."""
        base = f"{self.namespace}/{self.name}/{self.protocol.value}"
        return f"{base}/{self.port}" if self.port else base


@dataclass(frozen=True)
class ServicePort:
    """Everything the rules need about one Service port in one IP family.

    ``cluster_endpoints`` is what Cluster traffic policy uses (ready endpoints
    anywhere, else serving terminating ones); ``local_endpoints`` what Local
    policy uses (the same, on this node only).
    """

    name: ServicePortName
    entries: tuple[Entry, ...]
    cluster_endpoints: tuple[Endpoint, ...]
    local_endpoints: tuple[Endpoint, ...]
    internal_local: bool = False
    external_local: bool = False
    affinity_timeout: int | None = None
    source_ranges: tuple[IPNetwork, ...] = ()
    serving_endpoints: tuple[Endpoint, ...] = ()
    """Every endpoint that serves, terminating ones included: their UDP flows stay."""
    owner: str = "Service"
    """The kind of object the port comes from: ``Service``, or ``Pod`` for a hostPort."""
    hairpin: tuple[Addr, ...] = ()
    """Endpoints that may run on this node (its own, and those without ``nodeName``):
    only they can reach themselves through the Service here, to be masqueraded."""

    @property
    def protocol(self) -> Protocol:
        """The port's L4 protocol."""
        return self.name.protocol

    @property
    def internal_endpoints(self) -> tuple[Endpoint, ...]:
        """Endpoints for ClusterIP traffic, per internalTrafficPolicy."""
        return self.local_endpoints if self.internal_local else self.cluster_endpoints


@dataclass(frozen=True)
class FamilyState:
    """The desired proxy state of one IP family."""

    node: FamilyNode
    service_ports: tuple[ServicePort, ...]


@dataclass(frozen=True)
class ProxyState:
    """The desired proxy state of both families, and what was skipped on the way."""

    families: tuple[FamilyState, ...]
    problems: tuple[Problem, ...] = ()
    clashes: int = 0
    """How many entries were claimed by two Service ports (one of them lost it)."""


def _ignore_reason(svc: Service) -> str | None:
    if svc.type == "ExternalName":
        return "ExternalName Service"
    if svc.headless or not svc.cluster_ips:
        return "headless Service"
    if svc.proxy_name is not None and svc.proxy_name != PROXY_NAME:
        return f"handled by service proxy {svc.proxy_name!r}"
    return None


class Where(NamedTuple):
    """This node's name and zone: what topology hints are matched against."""

    node: str
    zone: str


NOWHERE = Where("", "")
SAME_NODE = "PreferSameNode"
SAME_ZONE = "PreferSameZone"


def topology_mode(eps: Iterable[SliceEndpoint], where: Where) -> str:
    """Which hints Cluster traffic follows, as upstream's ``topologyModeFromHints``:
    node hints when every ready endpoint has one and one names this node, else zone
    hints when every ready endpoint has one and one names this zone, else none."""
    ready = [ep for ep in eps if ep.ready]
    if not ready:
        return ""
    if all(ep.node_hints for ep in ready) and any(where.node in ep.node_hints for ep in ready):
        return SAME_NODE
    if all(ep.zone_hints for ep in ready) and any(where.zone in ep.zone_hints for ep in ready):
        return SAME_ZONE
    return ""


def _for_topology(ep: SliceEndpoint, mode: str, where: Where) -> bool:
    if mode == SAME_NODE:
        return where.node in ep.node_hints
    if mode == SAME_ZONE:
        return where.zone in ep.zone_hints
    return True


def _usable(
    endpoints: Iterable[Endpoint],
    eps: dict[Endpoint, SliceEndpoint],
    mode: str = "",
    where: Where = NOWHERE,
) -> tuple[Endpoint, ...]:
    """Ready endpoints (those the topology mode leaves), else the serving
    terminating ones (kube-proxy's fallback, which ignores topology)."""
    endpoints = tuple(endpoints)
    ready = [e for e in endpoints if eps[e].ready and _for_topology(eps[e], mode, where)]
    if not ready:
        ready = [e for e in endpoints if eps[e].serving and eps[e].terminating]
    return tuple(sorted(ready, key=lambda e: (addr_key(e.addr), e.port)))


def _port_endpoints(
    slices: list[EndpointSlice], spec: ServicePortSpec, version: int, node_name: str
) -> dict[Endpoint, SliceEndpoint]:
    """All endpoints of one Service port in one family, merged over its slices."""
    found: dict[Endpoint, SliceEndpoint] = {}
    for sl in slices:
        ports = [p.port for p in sl.ports if p.name == spec.name and p.protocol == spec.protocol]
        for port in ports:
            for ep in sl.endpoints:
                if addr_version(ep.addr) != version:
                    continue
                key = Endpoint(ep.addr, port, ep.node_name == node_name)
                if key not in found or ep.ready:
                    found[key] = ep
    return found


def _entries(
    svc: Service, spec: ServicePortSpec, node: FamilyNode, version: int
) -> Iterator[Entry]:
    for ip in svc.cluster_ips:
        if addr_version(ip) == version:
            yield Entry(ip, spec.port, EntryKind.CLUSTER_IP)
    for ip in svc.external_ips:
        if addr_version(ip) == version:
            yield Entry(ip, spec.port, EntryKind.EXTERNAL_IP)
    for ip in svc.load_balancer_ips:
        if addr_version(ip) == version:
            yield Entry(ip, spec.port, EntryKind.LOAD_BALANCER)
    if spec.node_port and svc.type in ("NodePort", "LoadBalancer"):
        for ip in node.nodeport_ips:
            yield Entry(ip, spec.node_port, EntryKind.NODE_PORT)


def _source_ranges(svc: Service, node: FamilyNode, version: int) -> tuple[IPNetwork, ...]:
    ranges = [r for r in svc.source_ranges if r.version == version]
    lb_ips = [ip for ip in svc.load_balancer_ips if addr_version(ip) == version]
    if not ranges or not lb_ips:
        return ()
    # A node reaching a VIP-style load balancer IP that is local to it loops back
    # with the LB IP as source: allow that when the ranges admit the node (upstream).
    primary = ipaddress.ip_address(node.primary) if node.primary else None
    if primary is not None and any(primary in r for r in ranges):
        ranges.extend(ipaddress.ip_network(ip) for ip in lb_ips)
    return tuple(ranges)


def _service_ports(
    svc: Service, slices: list[EndpointSlice], node: FamilyNode, where: Where
) -> Iterator[ServicePort]:
    version = 4 if node.family == Family.IP else 6
    if not any(addr_version(ip) == version for ip in svc.cluster_ips):
        return
    for spec in svc.ports:
        eps = _port_endpoints(slices, spec, version, where.node)
        cluster = _usable(eps, eps, topology_mode(eps.values(), where), where)
        local = _usable((e for e in eps if e.local), eps)
        yield ServicePort(
            name=ServicePortName(svc.namespace, svc.name, spec.protocol, spec.name),
            entries=tuple(_entries(svc, spec, node, version)),
            cluster_endpoints=cluster,
            local_endpoints=local,
            internal_local=svc.internal_local,
            external_local=svc.external_local and svc.type in ("NodePort", "LoadBalancer"),
            affinity_timeout=svc.affinity_timeout,
            source_ranges=_source_ranges(svc, node, version),
            serving_endpoints=tuple(e for e, sl in eps.items() if sl.serving),
            hairpin=_hairpin((*cluster, *local), eps, where.node),
        )


def _hairpin(
    used: tuple[Endpoint, ...], eps: dict[Endpoint, SliceEndpoint], node_name: str
) -> tuple[Addr, ...]:
    """The used endpoints that may run here: this node's, or placed nowhere."""
    return tuple(dict.fromkeys(e.addr for e in used if eps[e].node_name in (None, "", node_name)))


def _host_ports(pod: Pod, node: FamilyNode, node_name: str) -> Iterator[ServicePort]:
    version = 4 if node.family == Family.IP else 6
    if pod.node_name != node_name or pod.phase != "Running":
        return
    pod_ip = next((ip for ip in pod.pod_ips if addr_version(ip) == version), None)
    if pod_ip is None:
        return
    for hp in pod.host_ports:
        if hp.host_ip is not None and addr_version(hp.host_ip) != version:
            continue
        addrs = [hp.host_ip] if hp.host_ip not in (None, "0.0.0.0", "::") else node.ips
        endpoint = Endpoint(pod_ip, hp.container_port, local=True)
        yield ServicePort(
            name=ServicePortName(pod.namespace, pod.name, hp.protocol, f"hostport-{hp.host_port}"),
            entries=tuple(
                Entry(a, hp.host_port, EntryKind.HOST_PORT)
                for a in addrs
                if a and not is_loopback(a)
            ),
            cluster_endpoints=(endpoint,),
            local_endpoints=(endpoint,),
            # As the CNI portmap plugin: the client address is kept; only the
            # node's own traffic and hairpin traffic are masqueraded.
            external_local=True,
            owner="Pod",
            hairpin=(pod_ip,),
        )


def _claim_entries(ports: list[ServicePort]) -> tuple[list[ServicePort], list[Problem]]:
    """Give every (address, protocol, port) to one Service port only.

    Service addresses win over NodePorts and hostPorts, as in kube-proxy, where
    the service-IP lookup comes before the NodePort lookup.
    """
    owner: dict[tuple[Addr, Protocol, int], ServicePortName] = {}
    problems: list[Problem] = []
    late = (EntryKind.NODE_PORT, EntryKind.HOST_PORT)
    for pass_kinds in ([k for k in EntryKind if k not in late], list(late)):
        for sp in ports:
            for e in sp.entries:
                key = (e.addr, sp.protocol, e.port)
                if e.kind in pass_kinds and owner.setdefault(key, sp.name) != sp.name:
                    problems.append(
                        Problem(
                            "",
                            str(sp.name),
                            e.kind.value,
                            f"{e.addr} {sp.protocol} "
                            f"port {e.port} already belongs to {owner[key]}; ignored",
                        )
                    )
    if not problems:
        return ports, problems
    kept = [
        dataclasses.replace(
            sp,
            entries=tuple(e for e in sp.entries if owner[(e.addr, sp.protocol, e.port)] == sp.name),
        )
        for sp in ports
    ]
    return kept, problems


def _port_order(sp: ServicePort) -> tuple[str, str, str, str]:
    n = sp.name  # a plain tuple: comparing the dataclasses is ten times slower
    return (n.namespace, n.name, n.protocol.value, n.port)


def serving_flows(state: ProxyState) -> dict[tuple[str, str, int], frozenset[tuple[str, int]]]:
    """(protocol, entry address, entry port) -> the (address, port) of every endpoint
    that serves it: flows to these survive a sync (see :mod:`nftproxy.nft.conntrack`)."""
    out: dict[tuple[str, str, int], frozenset[tuple[str, int]]] = {}
    for fs in state.families:
        for sp in fs.service_ports:
            if sp.protocol == Protocol.TCP:
                continue
            serving = frozenset((str(e.addr), e.port) for e in sp.serving_endpoints)
            for entry in sp.entries:
                out[(sp.protocol.value, str(entry.addr), entry.port)] = serving
    return out


def compute_state(objects: Iterable[Sourced], node: NodeConfig) -> ProxyState:
    """Decide the desired proxy state for this node from Services, slices and Pods."""
    services: dict[tuple[str, str], Service] = {}
    slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
    pods: list[Pod] = []
    problems: list[Problem] = []
    ignored: set[tuple[str, str]] = set()
    for source, obj in objects:
        if isinstance(obj, Service):
            reason = _ignore_reason(obj)
            if reason is None:
                services[(obj.namespace, obj.name)] = obj
            else:
                ignored.add((obj.namespace, obj.name))
                problems.append(
                    Problem(
                        source,
                        f"Service {obj.namespace}/{obj.name}",
                        "",
                        f"ignored: {reason}",
                        note=True,
                    )
                )
        elif isinstance(obj, EndpointSlice):
            slices[(obj.namespace, obj.service)].append(obj)
        else:
            pods.append(obj)
    for (ns, name), owned in sorted(slices.items()):
        if (ns, name) not in services and (ns, name) not in ignored:
            problems += [
                Problem(
                    "",
                    f"EndpointSlice {ns}/{sl.name}",
                    "metadata.labels",
                    f"names unknown Service {ns}/{name}; not used",
                )
                for sl in owned
            ]
    families = []
    clashed = 0
    where = Where(node.name, node.zone or "")
    for family in (Family.IP, Family.IP6):
        fnode = node.family(family)
        ports = [
            sp
            for key in sorted(services)
            for sp in _service_ports(services[key], slices.get(key, []), fnode, where)
        ]
        if node.host_ports:
            ports += [sp for pod in pods for sp in _host_ports(pod, fnode, node.name)]
        kept, clashes = _claim_entries(sorted(ports, key=_port_order))
        problems += clashes
        clashed += len(clashes)
        families.append(FamilyState(fnode, tuple(kept)))
    return ProxyState(tuple(families), tuple(problems), clashed)
