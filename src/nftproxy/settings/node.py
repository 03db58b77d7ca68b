"""The node's proxy settings: from flags, a KubeProxyConfiguration file, the host."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from nftproxy.k8s.node import NodeInfo
from nftproxy.k8s.objects import Addr, IPAddress, IPNetwork, is_loopback
from nftproxy.nft.model import Family
from nftproxy.settings.host import hostname, node_ips
from nftproxy.settings.model import Settings

DEFAULT_MASQUERADE_BIT = 14
NODE_CIDR = "NodeCIDR"
PRIMARY = "primary"
ALL = "all"


class ConfigError(ValueError):
    """A setting that cannot be used."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything about this node and the proxy's settings that shapes the rules.

    ``ips`` are the node's addresses, the first of each family its primary one.
    ``nodeport_addresses`` holds CIDRs and the words ``primary`` and ``all``
    (empty means ``primary``, as kube-proxy's nftables mode).
    """

    name: str
    ips: tuple[IPAddress, ...]
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    service_cidrs: tuple[IPNetwork, ...] = ()
    nodeport_addresses: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    host_ports: bool = True
    """Program Pods' hostPorts (off when the CNI ``portmap`` plugin does it)."""
    service_counters: bool = True
    """Count each Service entry's new and rejected connections in the kernel."""
    zone: str | None = None
    """The node's ``topology.kubernetes.io/zone`` label, for topology hints."""
    pod_interface: str | None = None
    """Pod traffic recognised by its input interface instead of ``cluster_cidrs``:
    a bridge's name (``cbr0``), or a prefix ending in ``*`` (``veth*``)."""

    def family(self, family: Family) -> FamilyNode:
        """The settings that apply to one IP family."""
        version = 4 if family == Family.IP else 6
        ips = tuple(Addr(str(ip)) for ip in self.ips if ip.version == version)
        return FamilyNode(
            family=family,
            ips=ips,
            primary=ips[0] if ips else None,
            nodeport_ips=_nodeport_ips(self.nodeport_addresses, ips),
            pod_cidrs=tuple(c for c in self.cluster_cidrs if c.version == version),
            service_cidrs=tuple(c for c in self.service_cidrs if c.version == version),
            masquerade_all=self.masquerade_all,
            masquerade_mark=1 << self.masquerade_bit,
            pod_interface=self.pod_interface,
            service_counters=self.service_counters,
        )


@dataclass(frozen=True)
class FamilyNode:
    """The node settings of one family, as the rule builder uses them."""

    family: Family
    ips: tuple[Addr, ...]
    primary: Addr | None
    nodeport_ips: tuple[Addr, ...]
    pod_cidrs: tuple[IPNetwork, ...]
    service_cidrs: tuple[IPNetwork, ...]
    masquerade_all: bool
    masquerade_mark: int = field(default=1 << DEFAULT_MASQUERADE_BIT)
    pod_interface: str | None = None
    service_counters: bool = True


def _nodeport_ips(selectors: tuple[str, ...], ips: tuple[Addr, ...]) -> tuple[Addr, ...]:
    usable = [ip for ip in ips if not is_loopback(ip)]
    chosen: list[Addr] = []
    for sel in selectors or (PRIMARY,):
        if sel == PRIMARY:
            chosen.extend(usable[:1])
        elif sel == ALL:
            chosen.extend(usable)
        else:
            net = ipaddress.ip_network(sel, strict=False)
            chosen.extend(ip for ip in usable if ipaddress.ip_address(ip) in net)
    return tuple(dict.fromkeys(chosen))


def parse_cidrs(text: str | list[str] | None) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated (or listed) set of CIDRs."""
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else text
    try:
        return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in items if t.strip())
    except ValueError as err:
        raise ConfigError(str(err)) from None


def parse_nodeport_addresses(text: str | list[str] | None) -> tuple[str, ...]:
    """Validate a nodePortAddresses list: CIDRs, ``primary`` and ``all``."""
    if not text:
        return ()
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    for item in items:
        if item not in (PRIMARY, ALL):
            parse_cidrs(item)
    return tuple(items)


def parse_bool(value: object, what: str) -> bool:
    """A boolean setting: true/false (any case) or a YAML boolean."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{what}: want true or false, not {value!r}")
    return text == "true"


def parse_ips(texts: list[str]) -> tuple[IPAddress, ...]:
    """Parse node IPs."""
    try:
        return tuple(ipaddress.ip_address(t.strip()) for t in texts)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def node_config(settings: Settings, netns: str | None = None) -> NodeConfig:
    """The node's settings: the settings' addresses and name, else the host's."""
    ips = parse_ips(list(settings.node_ips)) if settings.node_ips else node_ips(netns)
    name = settings.hostname_override or hostname()
    pod_interface = settings.pod_interface
    return NodeConfig(
        name=name,
        ips=ips,
        pod_interface=pod_interface,
        cluster_cidrs=() if pod_interface else parse_cidrs(list(settings.cluster_cidr)),
        service_cidrs=parse_cidrs(list(settings.service_cidr)),
        nodeport_addresses=parse_nodeport_addresses(list(settings.nodeport_addresses)),
        masquerade_all=settings.masquerade_all,
        masquerade_bit=settings.masquerade_bit,
        host_ports=settings.host_ports,
        service_counters=settings.service_counters,
    )


def with_node(
    base: NodeConfig, node: NodeInfo | None, cidrs: tuple[str, ...], detect_local: str
) -> NodeConfig:
    """The settings for this sync: the Node's addresses (else the host's or the
    flags') and zone, its podCIDRs with ``detectLocalMode: NodeCIDR``, and the cluster's
    ServiceCIDRs when the API server has them (else ``--service-cidr``)."""
    out = base
    if node is not None and node.ips:
        out = dataclasses.replace(out, ips=node.ips)
    if node is not None:
        out = dataclasses.replace(out, zone=node.zone)
    if detect_local == NODE_CIDR:
        out = dataclasses.replace(out, cluster_cidrs=node.pod_cidrs if node else ())
    if cidrs:
        out = dataclasses.replace(out, service_cidrs=parse_cidrs(list(cidrs)))
    return out
