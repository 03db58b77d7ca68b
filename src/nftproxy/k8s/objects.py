"""Typed views of the Kubernetes objects nftproxy reads, parsed and validated.

``parse_object`` turns one API object (a dict, as in a manifest or on the wire)
into a frozen value, or raises :class:`~nftproxy.k8s.problems.InvalidObjectError` naming
the field that is wrong. Kubernetes meaning (which Services to ignore, which
endpoints to use) is not decided here but in :mod:`nftproxy.proxy.state`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, NewType

from nftproxy.k8s.problems import InvalidObjectError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = NewType("Addr", str)
"""An IPv4 or IPv6 address in canonical text form (as nft prints it).

Addresses are kept as text: a cluster has hundreds of thousands of them, and
``ipaddress`` objects cost far more to make, hash and print."""


def parse_addr(text: str) -> Addr:
    """The canonical text of an address; ValueError if it is not one."""
    text = text.strip()
    try:
        if ":" not in text:
            socket.inet_pton(socket.AF_INET, text)  # refuses leading zeros: valid is canonical
            return Addr(text)
        return Addr(socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)))
    except OSError:
        raise ValueError(f"invalid IP address {text!r}") from None


def addr_version(addr: Addr) -> int:
    """4 or 6."""
    return 6 if ":" in addr else 4


def addr_key(addr: Addr) -> bytes:
    """A sort key that orders addresses numerically, IPv4 first."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    packed = socket.inet_pton(family, addr)
    return bytes([len(packed)]) + packed


def is_loopback(addr: Addr) -> bool:
    """127.0.0.0/8 or ::1."""
    return addr.startswith("127.") or addr == "::1"


SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
DEFAULT_AFFINITY_SECONDS = 10800
MAX_AFFINITY_SECONDS = 86400


class Protocol(StrEnum):
    """An L4 protocol a Service port may use (the nft name is the lower-case value)."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True)
class ServicePortSpec:
    """One entry of ``spec.ports``."""

    name: str
    protocol: Protocol
    port: int
    node_port: int | None


@dataclass(frozen=True)
class Service:
    """A v1 Service, reduced to what a proxy needs."""

    namespace: str
    name: str
    type: str
    cluster_ips: tuple[Addr, ...]
    headless: bool
    external_ips: tuple[Addr, ...]
    load_balancer_ips: tuple[Addr, ...]
    ports: tuple[ServicePortSpec, ...]
    affinity_timeout: int | None
    external_local: bool
    internal_local: bool
    source_ranges: tuple[IPNetwork, ...]
    health_check_node_port: int | None
    proxy_name: str | None


@dataclass(frozen=True)
class SlicePort:
    """One entry of an EndpointSlice's ``ports``."""

    name: str
    protocol: Protocol
    port: int


NO_HINTS: frozenset[str] = frozenset()
"""The one empty hint set: CPython makes a new empty frozenset on every call, and
two per endpoint were 100 MB at 250,000 endpoints."""


class SliceEndpoint(NamedTuple):
    """One address of an EndpointSlice endpoint, with its conditions."""

    addr: Addr
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None
    zone_hints: frozenset[str] = NO_HINTS
    """``hints.forZones``: the zones whose nodes should use this endpoint."""
    node_hints: frozenset[str] = NO_HINTS
    """``hints.forNodes``: the nodes that should use this endpoint."""


@dataclass(frozen=True)
class EndpointSlice:
    """A discovery.k8s.io/v1 EndpointSlice of address type IPv4 or IPv6."""

    namespace: str
    name: str
    service: str
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]


@dataclass(frozen=True)
class HostPort:
    """A container port published on the node with ``hostPort``."""

    host_port: int
    container_port: int
    protocol: Protocol
    host_ip: Addr | None


@dataclass(frozen=True)
class Pod:
    """A v1 Pod, reduced to what hostPort handling needs."""

    namespace: str
    name: str
    node_name: str | None
    phase: str
    pod_ips: tuple[Addr, ...]
    host_ports: tuple[HostPort, ...]


KubeObject = Service | EndpointSlice | Pod

Sourced = tuple[str, KubeObject]
"""An object with where it came from (a file path, or ``api``)."""


def object_label(doc: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` of a raw object, as far as it can be read."""
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    name = meta.get("name", "?")
    ns = meta.get("namespace", "default")
    return f"{doc.get('kind', '?')} {ns}/{name}"


@functools.cache
def _parts(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def get_field(doc: Mapping[str, Any], path: str, kind: type, default: Any = None) -> Any:
    """Read a dotted path; None and missing give default; a wrong type is an error."""
    cur: Any = doc
    for part in _parts(path):
        if type(cur) is not dict:
            raise InvalidObjectError(path, "expected an object")
        cur = cur.get(part)
        if cur is None:
            return default
    if type(cur) is not kind and (not isinstance(cur, kind) or isinstance(cur, bool)):
        raise InvalidObjectError(path, f"expected {kind.__name__}, got {type(cur).__name__}")
    return cur


def _ip(text: Any, field: str) -> Addr:
    if not isinstance(text, str):
        raise InvalidObjectError(field, "expected an IP address string")
    try:
        return parse_addr(text)
    except ValueError:
        raise InvalidObjectError(field, f"invalid IP address {text!r}") from None


def _port(value: Any, field: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise InvalidObjectError(field, f"port {value!r} out of range {low}-65535")
    return value


def _protocol(value: Any, field: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    try:
        return Protocol(str(value).lower())
    except ValueError:
        raise InvalidObjectError(field, f"unknown protocol {value!r}") from None


# The API server's name rules (k8s.io/apimachinery/pkg/util/validation). Names reach
# nft only in comments and chain names; refusing what the API refuses keeps every
# name to these alphabets and lengths (a file can hold anything).
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[-a-z0-9]+")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253
IANA_SVC_NAME_MAX = 15


def _checked(value: str, field: str, pattern: re.Pattern[str], limit: int, what: str) -> str:
    if len(value) > limit or not pattern.fullmatch(value):
        raise InvalidObjectError(field, f"{value!r} is not a valid {what}")
    return value


def dns_label(value: str, field: str) -> str:
    """value if it is a DNS-1123 label (namespaces, port names), else an error."""
    return _checked(value, field, _DNS1123_LABEL, LABEL_MAX, "DNS-1123 label")


def dns1035_label(value: str, field: str) -> str:
    """value if it is a DNS-1035 label (Service names), else an error."""
    return _checked(value, field, _DNS1035_LABEL, LABEL_MAX, "DNS-1035 label")


def dns_subdomain(value: str, field: str) -> str:
    """value if it is a DNS-1123 subdomain (Pod and EndpointSlice names), else an error."""
    return _checked(value, field, _DNS1123_SUBDOMAIN, SUBDOMAIN_MAX, "DNS-1123 subdomain")


def label_value(value: str, field: str) -> str:
    """value if it is a valid label value, else an error."""
    return _checked(value, field, _LABEL_VALUE, LABEL_MAX, "label value")


def iana_svc_name(value: str, field: str) -> str:
    """value if it is an IANA_SVC_NAME (container port names), else an error."""
    ok = (
        _IANA_SVC_NAME.fullmatch(value)
        and len(value) <= IANA_SVC_NAME_MAX
        and re.search("[a-z]", value)
        and not value.startswith("-")
        and not value.endswith("-")
        and "--" not in value
    )
    if not ok:
        raise InvalidObjectError(field, f"{value!r} is not a valid IANA_SVC_NAME")
    return value


NameRule = Callable[[str, str], str]


def _metadata(
    doc: Mapping[str, Any], name_rule: NameRule = dns_subdomain
) -> tuple[str, str, Mapping[str, Any]]:
    name = get_field(doc, "metadata.name", str)
    if not name:
        raise InvalidObjectError("metadata.name", "missing")
    name_rule(name, "metadata.name")
    namespace = dns_label(
        get_field(doc, "metadata.namespace", str, "default"), "metadata.namespace"
    )
    labels = get_field(doc, "metadata.labels", Mapping, {})
    return namespace, name, labels


def label_of(labels: Mapping[str, Any], key: str) -> str | None:
    """The value of a label, checked; None when the object does not have it."""
    value = labels.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidObjectError(f"metadata.labels[{key}]", "expected a string")
    return label_value(value, f"metadata.labels[{key}]")


def _port_name(value: Any, field: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidObjectError(field, "expected a string")
    return dns_label(value, field)


def get_list(doc: Mapping[str, Any], path: str) -> list[Any]:
    """The list at a dotted path; [] when missing or null."""
    value: list[Any] = get_field(doc, path, list, [])
    return value


def as_list(value: Any, field: str) -> list[Any]:
    """A field's value as a list: [] for null, an error if it is not a list."""
    if value is None:
        return []
    if type(value) is not list:
        raise InvalidObjectError(field, "expected a list")
    return value


def _service_ports(doc: Mapping[str, Any]) -> tuple[ServicePortSpec, ...]:
    ports = []
    for i, p in enumerate(get_list(doc, "spec.ports")):
        field = f"spec.ports[{i}]"
        if not isinstance(p, Mapping):
            raise InvalidObjectError(field, "expected an object")
        raw_node_port = p.get("nodePort")
        node_port = (
            0
            if raw_node_port is None
            else _port(raw_node_port, f"{field}.nodePort", allow_zero=True)
        )
        ports.append(
            ServicePortSpec(
                name=_port_name(p.get("name"), f"{field}.name"),
                protocol=_protocol(p.get("protocol"), f"{field}.protocol"),
                port=_port(p.get("port"), f"{field}.port"),
                node_port=node_port or None,
            )
        )
    return tuple(ports)


def _cluster_ips(doc: Mapping[str, Any]) -> tuple[tuple[Addr, ...], bool]:
    texts = get_list(doc, "spec.clusterIPs") or [get_field(doc, "spec.clusterIP", str, "")]
    if any(t in ("None", "") for t in texts):
        return (), texts == ["None"] or "None" in texts
    return tuple(_ip(t, f"spec.clusterIPs[{i}]") for i, t in enumerate(texts)), False


def _lb_ips(doc: Mapping[str, Any]) -> tuple[Addr, ...]:
    ips = []
    for i, ing in enumerate(get_list(doc, "status.loadBalancer.ingress")):
        if not isinstance(ing, Mapping) or not ing.get("ip"):
            continue
        if ing.get("ipMode") not in (None, "VIP"):
            continue  # ipMode Proxy: the load balancer delivers to the node itself
        ips.append(_ip(ing["ip"], f"status.loadBalancer.ingress[{i}].ip"))
    return tuple(ips)


def _source_ranges(doc: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    nets = []
    for i, text in enumerate(get_list(doc, "spec.loadBalancerSourceRanges")):
        field = f"spec.loadBalancerSourceRanges[{i}]"
        if not isinstance(text, str):
            raise InvalidObjectError(field, "expected a CIDR string")
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise InvalidObjectError(field, f"invalid CIDR {text!r}") from None
    return tuple(nets)


def _affinity(doc: Mapping[str, Any]) -> int | None:
    if get_field(doc, "spec.sessionAffinity", str, "None") != "ClientIP":
        return None
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    timeout: int = get_field(doc, path, int, DEFAULT_AFFINITY_SECONDS)
    if not 0 < timeout <= MAX_AFFINITY_SECONDS:
        raise InvalidObjectError(path, f"{timeout} out of range 1-{MAX_AFFINITY_SECONDS}")
    return timeout


def parse_service(doc: Mapping[str, Any]) -> Service:
    """Parse a v1 Service."""
    namespace, name, labels = _metadata(doc, dns1035_label)
    cluster_ips, headless = _cluster_ips(doc)
    svc_type = get_field(doc, "spec.type", str, "ClusterIP")
    hc = get_field(doc, "spec.healthCheckNodePort", int)
    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        headless=headless,
        external_ips=tuple(
            _ip(t, f"spec.externalIPs[{i}]")
            for i, t in enumerate(get_list(doc, "spec.externalIPs"))
        ),
        load_balancer_ips=_lb_ips(doc) if svc_type == "LoadBalancer" else (),
        ports=_service_ports(doc),
        affinity_timeout=_affinity(doc),
        external_local=get_field(doc, "spec.externalTrafficPolicy", str, "Cluster") == "Local",
        internal_local=get_field(doc, "spec.internalTrafficPolicy", str, "Cluster") == "Local",
        source_ranges=_source_ranges(doc),
        health_check_node_port=_port(hc, "spec.healthCheckNodePort") if hc else None,
        proxy_name=label_of(labels, PROXY_NAME_LABEL),
    )


def _slice_endpoint(ep: Any, i: int, family: int) -> list[SliceEndpoint]:
    if type(ep) is not dict:
        raise InvalidObjectError(f"endpoints[{i}]", "expected an object")
    cond = ep.get("conditions") or {}
    if type(cond) is not dict:
        raise InvalidObjectError(f"endpoints[{i}].conditions", "expected an object")
    # The API reads a nil ready/serving as true and a nil terminating as false.
    ready = cond.get("ready") is not False
    serving = cond.get("serving") is not False
    terminating = cond.get("terminating") is True
    node_name = ep.get("nodeName")
    if node_name is not None and not isinstance(node_name, str):
        raise InvalidObjectError(f"endpoints[{i}].nodeName", "expected a string")
    if node_name is not None:
        node_name = sys.intern(node_name)  # a few hundred nodes, 250,000 endpoints
    zones, nodes = _hints(ep.get("hints"), i)
    out = []
    for j, text in enumerate(as_list(ep.get("addresses"), f"endpoints[{i}].addresses")):
        addr = _ip(text, f"endpoints[{i}].addresses[{j}]")
        if (":" in addr) != (family == 6):
            raise InvalidObjectError(
                f"endpoints[{i}].addresses[{j}]", f"not an IPv{family} address"
            )
        out.append(SliceEndpoint(addr, ready, serving, terminating, node_name, zones, nodes))
    return out


def _hints(hints: Any, i: int) -> tuple[frozenset[str], frozenset[str]]:
    """An endpoint's topology hints: the zones and the nodes it is meant for."""
    if hints is None:
        return NO_HINTS, NO_HINTS
    if type(hints) is not dict:
        raise InvalidObjectError(f"endpoints[{i}].hints", "expected an object")
    found = []
    for key in ("forZones", "forNodes"):
        items = hints.get(key) or []
        if type(items) is not list:
            raise InvalidObjectError(f"endpoints[{i}].hints.{key}", "expected a list")
        names = []
        for j, item in enumerate(items):
            field = f"endpoints[{i}].hints.{key}[{j}].name"
            name = item.get("name") if isinstance(item, Mapping) else None
            if not isinstance(name, str) or not name:
                raise InvalidObjectError(field, "expected a name")
            names.append(name)
        found.append(frozenset(names))
    return found[0], found[1]


def _slice_ports(doc: Mapping[str, Any]) -> tuple[SlicePort, ...]:
    ports = []
    for i, p in enumerate(get_list(doc, "ports")):
        if not isinstance(p, Mapping):
            raise InvalidObjectError(f"ports[{i}]", "expected an object")
        if p.get("port") is None:
            continue  # a nil port means "all ports"; kube-proxy ignores such ports too
        ports.append(
            SlicePort(
                name=_port_name(p.get("name"), f"ports[{i}].name"),
                protocol=_protocol(p.get("protocol"), f"ports[{i}].protocol"),
                port=_port(p.get("port"), f"ports[{i}].port"),
            )
        )
    return tuple(ports)


def parse_endpoint_slice(doc: Mapping[str, Any]) -> EndpointSlice | None:
    """Parse an EndpointSlice; None for address type FQDN (not proxied)."""
    namespace, name, labels = _metadata(doc)
    service = label_of(labels, SERVICE_NAME_LABEL)
    if not service:
        raise InvalidObjectError(f"metadata.labels[{SERVICE_NAME_LABEL}]", "missing")
    address_type = get_field(doc, "addressType", str)
    if address_type == "FQDN":
        return None
    if address_type not in ("IPv4", "IPv6"):
        raise InvalidObjectError("addressType", f"unknown address type {address_type!r}")
    family = 4 if address_type == "IPv4" else 6
    endpoints = [
        e for i, ep in enumerate(get_list(doc, "endpoints")) for e in _slice_endpoint(ep, i, family)
    ]
    return EndpointSlice(namespace, name, service, tuple(endpoints), _slice_ports(doc))


def _host_ports(doc: Mapping[str, Any]) -> tuple[HostPort, ...]:
    out = []
    for c, container in enumerate(get_list(doc, "spec.containers")):
        if not isinstance(container, Mapping):
            raise InvalidObjectError(f"spec.containers[{c}]", "expected an object")
        ports = as_list(container.get("ports"), f"spec.containers[{c}].ports")
        for p, port in enumerate(ports):
            field = f"spec.containers[{c}].ports[{p}]"
            if not isinstance(port, Mapping) or not port.get("hostPort"):
                continue
            host_ip = port.get("hostIP")
            if port.get("name"):
                iana_svc_name(str(port["name"]), f"{field}.name")
            out.append(
                HostPort(
                    host_port=_port(port["hostPort"], f"{field}.hostPort"),
                    container_port=_port(port.get("containerPort"), f"{field}.containerPort"),
                    protocol=_protocol(port.get("protocol"), f"{field}.protocol"),
                    host_ip=_ip(host_ip, f"{field}.hostIP") if host_ip else None,
                )
            )
    return tuple(out)


def parse_pod(doc: Mapping[str, Any]) -> Pod:
    """Parse a v1 Pod."""
    namespace, name, _ = _metadata(doc, dns_subdomain)
    ips = [p.get("ip") for p in get_list(doc, "status.podIPs") if isinstance(p, Mapping)]
    if not ips and get_field(doc, "status.podIP", str):
        ips = [doc["status"]["podIP"]]
    return Pod(
        namespace=namespace,
        name=name,
        node_name=get_field(doc, "spec.nodeName", str),
        phase=get_field(doc, "status.phase", str, "Unknown"),
        pod_ips=tuple(_ip(t, f"status.podIPs[{i}].ip") for i, t in enumerate(ips)),
        host_ports=_host_ports(doc),
    )


def parse_object(doc: Mapping[str, Any]) -> KubeObject | None:
    """Parse a Service, EndpointSlice or Pod; None for an object nftproxy does not proxy."""
    kind = doc.get("kind")
    if kind == "Service":
        return parse_service(doc)
    if kind == "EndpointSlice":
        return parse_endpoint_slice(doc)
    if kind == "Pod":
        return parse_pod(doc)
    raise InvalidObjectError("kind", f"unsupported kind {kind!r}")
