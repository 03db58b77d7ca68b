"""Scenarios: a node, Kubernetes objects and packets with their expected fate.

The format is the one of the packet-flow conformance cases taken from upstream
kube-proxy (tests/conformance/README.md): ``node``, ``objects`` and ``cases``.
``run_scenario`` renders the objects for the node, loads the ruleset into a
:class:`~nftproxy.lab.netns.Lab` and sends every case's connections through the
real kernel.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.k8s.objects import EndpointSlice, IPAddress, IPNetwork
from nftproxy.lab.netns import LINK4, LINK6, Lab
from nftproxy.lab.probe import (
    DROP,
    REJECT,
    Outcome,
    Reached,
    connect,
    send_sctp_init,
    wait_for_line,
)
from nftproxy.nft.render import format_addr_port, render_script
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig, parse_cidrs

TRIES = 40
"""Connections per case with several endpoints: all must be allowed ones, and every
allowed one must be seen; with at most 3 equally likely endpoints the chance that
one is never picked is below 3 * (2/3)**40, about 2e-7."""


@dataclass(frozen=True)
class Case:
    """One packet flow: source, destination, and what upstream kube-proxy does with it."""

    name: str
    src: str
    dst: str
    port: int
    proto: str
    expect: tuple[str, ...] | str
    masq: bool


@dataclass
class Scenario:
    """A node, its objects and its cases."""

    path: Path
    node: NodeConfig
    objects: Loaded
    cases: list[Case]
    description: str = ""
    pod_networks: tuple[IPNetwork, ...] = ()
    """Where the lab's pods are (``clusterCIDR``), whatever detects them."""

    def veth_prefix(self, addr: IPAddress) -> str:
        """The node-side name prefix of a host's veth: the pod interface prefix for
        pods when the interface detector is on, else ``v``."""
        iface = self.node.pod_interface
        if iface and iface.endswith("*") and any(addr in n for n in self.pod_networks):
            return iface[:-1]
        return "v"


@dataclass
class Result:
    """What one case gave: every outcome seen, and why it failed (empty if it passed)."""

    case: Case
    outcomes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every connection went where upstream says."""
        return not self.failures


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file."""
    doc: Mapping[str, Any] = yaml.safe_load(path.read_text())
    n = doc["node"]
    pod_networks = parse_cidrs(n.get("clusterCIDR"))
    prefix = (
        n.get("interfaceNamePrefix") if n.get("detectLocalMode") == "InterfaceNamePrefix" else None
    )
    node = NodeConfig(
        name=n["name"],
        ips=tuple(ipaddress.ip_address(i) for i in n["ips"]),
        # With an interface detector the CIDRs only place the lab's pods.
        cluster_cidrs=() if prefix else pod_networks,
        pod_interface=f"{prefix}*" if prefix else None,
        service_cidrs=parse_cidrs(n.get("serviceCIDR")),
        nodeport_addresses=tuple(n.get("nodePortAddresses") or ()),
        masquerade_all=bool(n.get("masqueradeAll")),
        host_ports=bool(n.get("hostPorts", True)),
        service_counters=bool(n.get("serviceCounters", True)),
        zone=n.get("zone"),
    )
    objects = Loaded()
    load_objects(iter(doc.get("objects") or []), str(path), objects)
    cases = [
        Case(
            name=c["name"],
            src=str(c["from"]),
            dst=str(c["to"]),
            port=int(c["port"]),
            proto=c["proto"],
            masq=bool(c.get("masq")),
            expect=c["expect"] if isinstance(c["expect"], str) else tuple(c["expect"]),
        )
        for c in doc.get("cases") or []
    ]
    return Scenario(path, node, objects, cases, doc.get("description", ""), pod_networks)


def render(scenario: Scenario) -> str:
    """The nft script for a scenario's objects and node."""
    return render_script(build(compute_state(scenario.objects.objects, scenario.node)), names.TABLE)


def split_endpoint(text: str) -> tuple[str, int]:
    """``10.0.0.1:80`` or ``[2001:db8::1]:80`` into address and port."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port)


class Runner:
    """Builds the lab for a scenario and runs its cases."""

    def __init__(self, scenario: Scenario, lab: Lab) -> None:
        self.s = scenario
        self.lab = lab
        self.node_ips = set(scenario.node.ips)

    def _family_primary(self, version: int) -> IPAddress:
        return next(ip for ip in self.s.node.ips if ip.version == version)

    def _node_local_sources(self) -> Iterator[IPAddress]:
        """Sources that are the destination too: the node holds them (a local LB IP)."""
        for c in self.s.cases:
            if c.src == c.dst:
                yield ipaddress.ip_address(c.src)

    def _hosts(self) -> set[IPAddress]:
        addrs: set[IPAddress] = set()
        for c in self.s.cases:
            if c.src not in ("node", "localhost") and c.src != c.dst:
                addrs.add(ipaddress.ip_address(c.src))
            if not isinstance(c.expect, str):
                addrs.update(ipaddress.ip_address(split_endpoint(e)[0]) for e in c.expect)
            if c.expect == "PASS":
                addrs.add(ipaddress.ip_address(c.dst))
        for _, obj in self.s.objects.objects:
            if isinstance(obj, EndpointSlice):
                addrs.update(ipaddress.ip_address(ep.addr) for ep in obj.endpoints)
        return addrs - self.node_ips

    def ports(self) -> list[int]:
        """Every port a responder must listen on."""
        ports = {c.port for c in self.s.cases}
        for c in self.s.cases:
            if not isinstance(c.expect, str):
                ports.update(split_endpoint(e)[1] for e in c.expect)
        for _, obj in self.s.objects.objects:
            if isinstance(obj, EndpointSlice):
                ports.update(p.port for p in obj.ports)
        return sorted(ports)

    def setup(self, script: str | None = None) -> None:
        """Make the namespaces, start responders, load the ruleset."""
        for ip in [*self.s.node.ips, *self._node_local_sources()]:
            self.lab.add_node_ip(ip)
        for addr in sorted(self._hosts(), key=str):
            self.lab.add_host(addr, self.s.veth_prefix(addr))
        self.lab.start_responders(self.ports())
        self.lab.load(render(self.s) if script is None else script)

    def client(self, case: Case) -> tuple[str, str]:
        """The namespace and source address a case's connections come from."""
        version = ipaddress.ip_address(case.dst).version
        if case.src == "node":
            return self.lab.node, str(self._family_primary(version))
        if case.src == "localhost":
            return self.lab.node, "127.0.0.1" if version == 4 else "::1"
        src = ipaddress.ip_address(case.src)
        if src in self.node_ips or case.src == case.dst:
            return self.lab.node, case.src
        return self.lab.hosts[src], case.src

    def _once(self, case: Case, ns: str, src: str) -> Outcome:
        if case.proto != "sctp":
            return connect(ns, case.dst, case.port, case.proto, src=src)
        self.lab.sctp_log.write_text("")
        send_sctp_init(ns, case.dst, case.port, src=src)
        line = wait_for_line(self.lab.sctp_log, "sctp ")
        if line is None:
            return DROP
        _, responder, local, port, peer = line.split()
        return Reached(responder, local, int(port), peer)

    def describe(self, outcome: Outcome) -> str:
        """``ADDR:PORT from PEER`` (or ``masqueraded``) if reached, else the verdict."""
        if isinstance(outcome, str):
            return outcome
        who = self.lab.owner(outcome.responder)
        at = format_addr_port(outcome.local, outcome.port)
        where = at if who == outcome.local else f"{who} at {at}"
        masqueraded = outcome.peer in (str(LINK4), str(LINK6))
        return f"{where} {'masqueraded' if masqueraded else 'from ' + outcome.peer}"

    def run(self, case: Case) -> Result:
        """Send a case's connections and compare with its expectation."""
        ns, src = self.client(case)
        result = Result(case)
        tries = TRIES if not isinstance(case.expect, str) else 1
        seen: Counter[str] = Counter()
        for _ in range(tries):
            outcome = self._once(case, ns, src)
            result.outcomes.append(self.describe(outcome))
            problem = self.check(case, outcome, src)
            if problem:
                result.failures.append(problem)
                break
            if isinstance(outcome, Reached):
                seen[f"{outcome.local}:{outcome.port}"] += 1
        if not result.failures and not isinstance(case.expect, str):
            missing = [e for e in case.expect if "{}:{}".format(*split_endpoint(e)) not in seen]
            if missing:
                result.failures.append(f"never reached {missing} in {tries} tries")
        return result

    def check(self, case: Case, outcome: Outcome, src: str) -> str | None:
        """Why outcome does not meet the case, or None."""
        got = self.describe(outcome)
        if case.expect in (REJECT, DROP):
            return None if outcome == case.expect else f"expected {case.expect}, got {got}"
        if not isinstance(outcome, Reached):
            return f"expected {case.expect}, got {got}"
        if case.expect == "PASS":
            owner = "node" if ipaddress.ip_address(case.dst) in self.node_ips else case.dst
            ok = self.lab.owner(outcome.responder) == owner and outcome.local == case.dst
            return None if ok and outcome.port == case.port else f"expected PASS, got {got}"
        allowed = {split_endpoint(e) for e in case.expect}
        owner = self.lab.owner(outcome.responder)
        if (outcome.local, outcome.port) not in allowed or owner != outcome.local:
            return f"expected one of {list(case.expect)}, got {got}"
        link = str(LINK4 if ipaddress.ip_address(case.dst).version == 4 else LINK6)
        want_peer = link if case.masq else src
        if outcome.peer != want_peer:
            return f"expected masq={case.masq} (peer {want_peer}), got {got}"
        return None
