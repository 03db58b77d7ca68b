"""The one pipeline every command shares: settings and objects in, desired ruleset out.

``render``, ``apply`` and ``diff`` feed it manifests; ``run`` feeds it what the
watches hold. Settings come from flags first, then the KubeProxyConfiguration
file, then the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from typing import Any, NamedTuple

from nftproxy import kubeproxyconfig, log
from nftproxy.api.node import NodeInfo
from nftproxy.build import build
from nftproxy.config import (
    DEFAULT_MASQUERADE_BIT,
    ConfigError,
    NodeConfig,
    parse_cidrs,
    parse_ips,
    parse_nodeport_addresses,
)
from nftproxy.manifests import load_paths
from nftproxy.nft.model import Ruleset
from nftproxy.objects import Sourced
from nftproxy.problems import Problem
from nftproxy.state import ProxyState, compute_state

NODE_CIDR = "NodeCIDR"


class Options:
    """Flags over the config file: ``pick(name)`` is the flag when given, else the
    file's value, else ``default``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        path = getattr(args, "config", None)
        self.file: dict[str, Any] = {}
        if path:
            self.file, warnings = kubeproxyconfig.load(path)
            for warning in warnings:
                log.logger().warning("config field ignored", config=str(path), detail=warning)

    def pick(self, name: str, default: Any = None) -> Any:
        """The setting called name."""
        value = getattr(self.args, name, None)
        if value is None:
            value = self.file.get(name)
        return default if value is None else value


def node_config(opts: Options) -> NodeConfig:
    """Node settings from flags, then the config file, then the host."""
    args = opts.args
    if getattr(args, "node_ip", None):
        ips = parse_ips(args.node_ip)
    else:
        from nftproxy.netinfo import node_ips  # noqa: PLC0415 - netlink only when asked

        ips = node_ips(getattr(args, "netns", None))
    if opts.pick("hostname_override"):
        name = str(opts.pick("hostname_override"))
    else:
        from nftproxy.netinfo import hostname  # noqa: PLC0415 - netlink only when asked

        name = hostname()
    pod_interface = pod_interface_of(opts)
    return NodeConfig(
        name=name,
        ips=ips,
        pod_interface=pod_interface,
        cluster_cidrs=() if pod_interface else parse_cidrs(opts.pick("cluster_cidr")),
        service_cidrs=parse_cidrs(opts.pick("service_cidr")),
        nodeport_addresses=parse_nodeport_addresses(opts.pick("nodeport_addresses")),
        masquerade_all=bool(opts.pick("masquerade_all")),
        masquerade_bit=int(opts.pick("masquerade_bit", DEFAULT_MASQUERADE_BIT)),
        host_ports=opts.pick("host_ports") is not False,
    )


def pod_interface_of(opts: Options) -> str | None:
    """The interface pods' traffic comes in on, with the interface detectors
    (``None`` with ClusterCIDR and NodeCIDR)."""
    mode = opts.pick("detect_local_mode", "ClusterCIDR")
    if mode == "BridgeInterface":
        name = opts.pick("pod_bridge_interface")
        if not name:
            raise ConfigError("detectLocalMode BridgeInterface needs --pod-bridge-interface")
        return str(name)
    if mode == "InterfaceNamePrefix":
        prefix = opts.pick("pod_interface_name_prefix")
        if not prefix:
            raise ConfigError(
                "detectLocalMode InterfaceNamePrefix needs --pod-interface-name-prefix"
            )
        return f"{prefix}*"
    return None


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


class Wanted(NamedTuple):
    """What the objects ask for: the ruleset, what was skipped, and the state it
    was built from."""

    ruleset: Ruleset
    problems: list[Problem]
    state: ProxyState


def wanted(objects: Iterable[Sourced], node: NodeConfig) -> Wanted:
    """The desired ruleset for objects on this node."""
    state = compute_state(objects, node)
    return Wanted(build(state), list(state.problems), state)


def desired(args: argparse.Namespace) -> Wanted | None:
    """The desired ruleset from manifests, or None when nothing usable was read.

    A Node named as this node among them, and ServiceCIDRs, count as in ``run``.
    """
    opts = Options(args)
    loaded = load_paths(args.paths)
    base = node_config(opts)
    this = [n for _, n in loaded.nodes if n.name == base.name]
    loaded.problems += [
        Problem(
            src, f"Node {n.name}", "metadata.name", f"not this node ({base.name}); ignored", True
        )
        for src, n in loaded.nodes
        if n.name != base.name
    ]
    detect_local = str(opts.pick("detect_local_mode", "ClusterCIDR"))
    node = with_node(base, this[-1] if this else None, tuple(loaded.service_cidrs), detect_local)
    ruleset, skipped, state = wanted(loaded.objects, node)
    problems = [*loaded.problems, *skipped]
    log.report(problems)
    if not loaded.objects and any(not p.note for p in problems):
        print("nftproxy: nothing usable could be read", file=sys.stderr)
        return None
    return Wanted(ruleset, problems, state)


def status(args: argparse.Namespace, problems: list[Problem]) -> int:
    """1 with --strict when an object was invalid, else 0."""
    return 1 if args.strict and any(not p.note for p in problems) else 0
