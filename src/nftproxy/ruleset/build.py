"""``ProxyState`` in, typed ``Ruleset`` out. Pure: no I/O, no nft syntax.

The shape is chosen for nft's costs (see ../README.md "Ruleset shape"): per-Service
state lives in a few named maps, never in per-Service chains or anonymous sets.
A new connection costs the same at any cluster size: one lookup of
``daddr . l4proto . dport`` in ``service-ips`` picks a small shared chain that
decides masquerading, then one lookup of ``daddr . l4proto . dport . random``
in ``backends-N`` (one map per endpoint count N) picks the endpoint. Only
Services with session affinity get a chain and a dynamic set of their own.
"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from nftproxy.k8s.objects import IPNetwork
from nftproxy.nft.model import (
    BaseHook,
    Chain,
    ChainType,
    DataType,
    Dnat,
    DnatMap,
    Element,
    Family,
    Field,
    Hook,
    Key,
    MarkSet,
    MarkTest,
    Masquerade,
    Match,
    Numgen,
    Op,
    Reject,
    Rule,
    Ruleset,
    Set,
    SetRef,
    SetUpdate,
    Table,
    Term,
    Value,
    Verdict,
    VerdictKind,
    VMap,
)
from nftproxy.proxy.state import Endpoint, Entry, EntryKind, FamilyState, ProxyState, ServicePort
from nftproxy.ruleset import names
from nftproxy.settings.node import FamilyNode

TUPLE: Key = (Field.DADDR, Field.L4PROTO, Field.DPORT)
"""What a Service entry is looked up by: destination address, protocol, port."""

TUPLE_TYPE = (DataType.ADDR, DataType.PROTO, DataType.SERVICE)
ENDPOINT_TYPE = (DataType.ADDR, DataType.SERVICE)
BACKENDS_TYPE = (*TUPLE_TYPE, DataType.INDEX)
AFFINITY_TYPE = (DataType.ADDR, DataType.INDEX)
"""An affinity set's key: the client, then the id of its endpoint (``names.endpoint_id``)."""
AFFINITY_SIZE = 1 << 20
"""Clients an affinity set may hold. kube-proxy's sets hold 65,535 each, one per
endpoint; one set per Service port needs room for the clients of all of them."""
ALL_PROTOCOLS = ("tcp", "udp", "sctp")
FILTER_PRIORITY = -110  # before DNAT (-100): filters see the Service address
POST_DNAT_PRIORITY = -90

TABLE_COMMENT = "nftproxy: Kubernetes Services (generated, do not edit)"

# (name, type, hook, priority) of every base chain.
BASE_CHAINS = (
    ("filter-prerouting", ChainType.FILTER, Hook.PREROUTING, FILTER_PRIORITY),
    ("filter-input", ChainType.FILTER, Hook.INPUT, FILTER_PRIORITY),
    ("filter-forward", ChainType.FILTER, Hook.FORWARD, FILTER_PRIORITY),
    ("filter-output", ChainType.FILTER, Hook.OUTPUT, FILTER_PRIORITY),
    ("filter-output-post-dnat", ChainType.FILTER, Hook.OUTPUT, POST_DNAT_PRIORITY),
    ("nat-prerouting", ChainType.NAT, Hook.PREROUTING, -100),
    ("nat-output", ChainType.NAT, Hook.OUTPUT, -100),
    ("nat-postrouting", ChainType.NAT, Hook.POSTROUTING, 100),
)

# (base chain, chain it jumps to, only for new connections). reject is valid only
# in input, forward and output, hence the endpoint check is not in prerouting.
# The endpoint check runs after DNAT on every path: input and forward come after
# prerouting's DNAT, and on the output path (the node itself, hostNetwork pods) it
# runs after nat-output, so that the short-circuit of an externalTrafficPolicy: Local
# Service without local endpoints is taken before the "drop" for outside clients is
# seen (kubernetes#131765, fixed upstream by PR #132456).
JUMPS = (
    ("filter-prerouting", names.FIREWALL_CHECK, True),
    ("filter-input", names.ENDPOINTS_CHECK, True),
    ("filter-forward", names.ENDPOINTS_CHECK, True),
    ("filter-forward", names.CLUSTER_IPS_CHECK, True),
    ("filter-output", names.FIREWALL_CHECK, True),
    ("filter-output-post-dnat", names.ENDPOINTS_CHECK, True),
    ("filter-output-post-dnat", names.CLUSTER_IPS_CHECK, True),
    ("nat-prerouting", names.SERVICES, False),
    ("nat-output", names.SERVICES, False),
    ("nat-postrouting", names.MASQUERADING, False),
)

# (name, key, value, interval, comment) of every fixed named set and map.
SETS = (
    (names.SERVICE_IPS, TUPLE_TYPE, (DataType.VERDICT,), False, "Service entries with endpoints"),
    (
        names.NO_ENDPOINT_SERVICES,
        TUPLE_TYPE,
        (DataType.VERDICT,),
        False,
        "Service entries without usable endpoints: reject or drop",
    ),
    (
        names.SERVICE_COUNTERS,
        TUPLE_TYPE,
        (),
        False,
        "Service entries with endpoints: each element counts their new connections",
    ),
    (names.CLUSTER_IPS, (DataType.ADDR,), (), False, "ClusterIPs of all Services"),
    (
        names.POD_CIDRS,
        (DataType.ADDR,),
        (),
        True,
        "pod CIDRs: traffic from here is cluster traffic",
    ),
    (names.FIREWALL_IPS, TUPLE_TYPE, (), False, "LoadBalancer entries with source ranges"),
    (
        names.FIREWALL_ALLOW,
        (*TUPLE_TYPE, DataType.ADDR),
        (),
        True,
        "LoadBalancer entries and the sources they allow",
    ),
    (
        names.APPLIED,
        (DataType.SERVICE,),
        (),
        False,
        "what nftproxy applied last: its element's comment names that generation",
    ),
    (
        names.HAIRPIN,
        (DataType.ADDR, DataType.ADDR),
        (),
        False,
        "endpoint to itself: a pod reaching itself through its Service",
    ),
)
COUNTED = frozenset((names.SERVICE_COUNTERS, names.NO_ENDPOINT_SERVICES))
"""The sets whose elements count packets (when the node counts): new connections per
Service entry, and those refused for want of endpoints."""


def _goto(chain: str) -> Verdict:
    return Verdict(VerdictKind.GOTO, chain)


def _jump(chain: str) -> Verdict:
    return Verdict(VerdictKind.JUMP, chain)


MARK_MASQ = _jump(names.MARK_FOR_MASQUERADE)


def cidr_text(net: IPNetwork) -> str:
    """A CIDR as nft lists it: a single-address network as the plain address."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def unique(elements: Iterable[Element]) -> tuple[Element, ...]:
    """The first element of every key, in order."""
    first: dict[tuple[str, ...], Element] = {}
    for e in elements:
        first.setdefault(e.key, e)
    return tuple(first.values())


_number_text = functools.cache(str)
"""``str(n)`` for a backends index or a port: each number's text made once."""


def fit(name: str) -> str:
    """name itself, or its hashed short form when nft would find it too long."""
    return name if len(name) <= names.NAME_MAX else names.hashed(name, prefix="long-")


@dataclass
class Made:
    """What the builders of one state's fragments share: chains by name (a name
    means one chain within a state), and endpoints' map values."""

    chains: dict[str, Chain] = field(default_factory=dict)
    targets: dict[Endpoint, tuple[str, str]] = field(default_factory=dict)


class _TableBuilder:
    """Collects elements and chains for one family's table."""

    def __init__(self, node: FamilyNode, made: Made | None = None) -> None:
        self.node = node
        self.elements: dict[str, list[Element]] = defaultdict(list)
        self.chains: dict[str, Chain] = {}
        self.made = made if made is not None else Made()
        """Chains (and endpoint texts) made for other owners of the same state."""
        self.port_sets: dict[str, Set] = {}
        """Sets that Service ports bring: affinity sets, and a backends map per
        endpoint count."""

    def element(
        self,
        set_name: str,
        key: Iterable[str],
        value: Value | None = None,
        comment: str | None = None,
    ) -> None:
        self.elements[set_name].append(Element(tuple(key), value, comment))

    def chain(self, name: str, *rules: tuple[Term, ...], comment: str | None = None) -> str:
        name = fit(name)
        if not self.has(name):
            text = None if comment is None else names.comment(comment)
            made = Chain(name, tuple(Rule(r) for r in rules), comment=text)
            self.chains[name] = self.made.chains[name] = made
        return name

    def has(self, name: str) -> bool:
        """Whether the chain is this builder's, taking it from another owner's when
        one made it (a shared chain such as ``pick-3`` is made once per state)."""
        if name in self.chains:
            return True
        made = self.made.chains.get(name)
        if made is None:
            return False
        self.chains[name] = made
        return True

    def target(self, ep: Endpoint) -> tuple[str, str]:
        """An endpoint as a map value, made once: a Service's entries (ClusterIP,
        NodePort, load balancer) share it, and at 250,000 endpoints every copy
        of the strings costs tens of MB. Addresses are interned: what the kernel
        is read back into shares them."""
        text = self.made.targets.get(ep)
        if text is None:
            text = self.made.targets[ep] = (sys.intern(str(ep.addr)), _number_text(ep.port))
        return text

    # -- endpoint selection -------------------------------------------------

    def selection(
        self,
        sp: ServicePort,
        key: tuple[str, ...],
        group: tuple[Endpoint, ...],
        *,
        local: bool,
        backends: str,
    ) -> str:
        """The chain that DNATs a new connection to one endpoint of group."""
        if sp.affinity_timeout is not None:
            return self.sticky(sp, group, local=local)
        endpoints = self.backend_map(backends, len(group))
        for i, ep in enumerate(group):
            self.elements[endpoints].append(Element((*key, _number_text(i)), self.target(ep)))
        prefix = "pick-local" if backends == names.LOCAL_BACKENDS else "pick"
        name = f"{prefix}-{len(group)}"
        if self.has(name):
            return name
        # nft accepts a port in a DNAT target only after a protocol match.
        return self.chain(
            name,
            (
                Match((Field.L4PROTO,), ALL_PROTOCOLS),
                DnatMap((*TUPLE, Numgen(len(group))), endpoints),
            ),
            comment=f"one of {len(group)} endpoints at random, from @{endpoints}",
        )

    def backend_map(self, kind: str, n: int) -> str:
        """The map of the entries with n endpoints (``backends-3``): one per endpoint
        count, so that a Service reaching a count no other has brings a new map in
        the same transaction as its ``pick-N`` chain. (nft 1.0.6 refuses a new
        ``dnat ... map`` rule on a map an earlier transaction made, so one shared
        map had to be loaded anew: 7 s and 540 MB at 250,000 endpoints.)"""
        name = f"{kind}-{n}"
        local = " local" if kind == names.LOCAL_BACKENDS else ""
        self.port_sets.setdefault(
            name,
            Set(
                name,
                BACKENDS_TYPE,
                ENDPOINT_TYPE,
                comment=f"entry and random index to one of {n}{local} endpoints",
            ),
        )
        return name

    def sticky(self, sp: ServicePort, group: tuple[Endpoint, ...], *, local: bool) -> str:
        """A chain of sessionAffinity ClientIP: a client keeps its endpoint until timeout.

        One dynamic set per Service port records ``client . endpoint id``: a client
        that holds an element for an endpoint goes back to it, and every new
        connection refreshes the element's timeout. A set per endpoint, as
        kube-proxy keeps, costs the kernel time quadratic in the number of sets."""
        aff = self.affinity_set(sp)
        targets = [self._to_endpoint(sp, ep, aff) for ep in group]
        rules: list[tuple[Term, ...]] = [
            (Match(held.key, SetRef(aff)), *to) for held, to in targets
        ]
        for i, (_, to) in enumerate(targets):
            # Rule i takes 1/(n-i) of what reaches it: each endpoint gets 1/n overall.
            first = (Match((Numgen(len(group) - i),), "0"),) if i < len(group) - 1 else ()
            rules.append((*first, *to))
        kind = "sticky-local" if local else "sticky"
        return self.chain(
            f"{kind}-{names.hashed(str(sp.name))}",
            *rules,
            comment=f"{sp.name}: ClientIP affinity {sp.affinity_timeout}s",
        )

    def affinity_set(self, sp: ServicePort) -> str:
        """The Service port's affinity set (shared by its cluster and local chains)."""
        name = fit(f"affinity-{names.hashed(str(sp.name))}")
        self.port_sets.setdefault(
            name,
            Set(
                name,
                AFFINITY_TYPE,
                dynamic=True,
                timeout=sp.affinity_timeout,
                size=AFFINITY_SIZE,
                comment="ClientIP affinity: client . endpoint id",
            ),
        )
        return name

    def _to_endpoint(
        self, sp: ServicePort, ep: Endpoint, aff: str
    ) -> tuple[SetUpdate, tuple[Term, ...]]:
        """The update that records a client at ep, and the terms that send it there."""
        held = (Field.SADDR, Numgen(1, names.endpoint_id(str(ep.addr), ep.port)))
        update = SetUpdate(aff, held)
        return update, (
            update,
            Match((Field.L4PROTO,), sp.protocol.value),
            Dnat(str(ep.addr), ep.port),
        )

    # -- traffic classes ----------------------------------------------------

    def from_pods(self, op: Op = Op.EQ) -> Match | None:
        """The match for traffic from pods (``op`` NE: from elsewhere), by the
        detector configured: an input interface, the pod CIDRs, or none."""
        if self.node.pod_interface:
            return Match((Field.IIFNAME,), self.node.pod_interface, op)
        if self.node.pod_cidrs:
            return Match((Field.SADDR,), SetRef(names.POD_CIDRS), op)
        return None

    def masquerade_cluster_traffic(self) -> tuple[Term, ...]:
        """Terms marking ClusterIP traffic for masquerade (none without a detector)."""
        if self.node.masquerade_all:
            return (MARK_MASQ,)
        elsewhere = self.from_pods(Op.NE)
        return (elsewhere, MARK_MASQ) if elsewhere is not None else ()

    def clusterip_class(self, sel: str) -> str:
        if self.has(f"clusterip/{sel}"):
            return f"clusterip/{sel}"
        masq = self.masquerade_cluster_traffic()
        return self.chain(
            f"clusterip/{sel}",
            *([masq] if masq else []),
            (_goto(sel),),
            comment="ClusterIP: masquerade off-cluster sources",
        )

    def external_class(self, sel: str) -> str:
        return self.chain(
            f"external/{sel}",
            (MARK_MASQ,),
            (_goto(sel),),
            comment="external entry, Cluster policy: always masquerade",
        )

    def external_local_class(self, sel: str, local_sel: str | None) -> str:
        local_source = Match((Field.FIB_SADDR_TYPE,), "local")
        rules: list[tuple[Term, ...]] = []
        pods = self.from_pods()
        if pods is not None:
            # Pods reaching an external address are subject to neither traffic policy.
            rules.append((pods, _goto(sel)))
        rules += [(local_source, MARK_MASQ), (local_source, _goto(sel))]
        if local_sel is not None:
            rules.append((_goto(local_sel),))
        return self.chain(
            f"external-local/{sel}/{local_sel or 'none'}",
            *rules,
            comment="external entry, Local policy: keep the client address",
        )

    # -- entries ------------------------------------------------------------

    def entry(self, sp: ServicePort, entry: Entry) -> None:
        key = (sys.intern(str(entry.addr)), sp.protocol.value, _number_text(entry.port))
        comment = names.comment(str(sp.name))
        if entry.kind == EntryKind.CLUSTER_IP:
            self.element(names.CLUSTER_IPS, key[:1])
        target, fallback = (self.external_entry if entry.external else self.internal_entry)(sp, key)
        if target is not None:
            self.element(names.SERVICE_IPS, key, ("goto", target), comment)
            if self.node.service_counters and sp.owner == "Service":  # not a Pod's hostPort
                self.element(names.SERVICE_COUNTERS, key, None, comment)
        if fallback is not None:
            self.element(names.NO_ENDPOINT_SERVICES, key, fallback, comment)
        if entry.kind == EntryKind.LOAD_BALANCER and sp.source_ranges:
            self.element(names.FIREWALL_IPS, key)
            for net in sp.source_ranges:
                self.element(names.FIREWALL_ALLOW, (*key, cidr_text(net)))

    def internal_entry(
        self, sp: ServicePort, key: tuple[str, ...]
    ) -> tuple[str | None, Value | None]:
        group = sp.internal_endpoints
        if not group:
            # No endpoints at all: reject. Only remote ones (internalTrafficPolicy Local): drop.
            return None, (("goto", names.REJECT) if not sp.cluster_endpoints else ("drop",))
        sel = self.selection(sp, key, group, local=sp.internal_local, backends=names.BACKENDS)
        return self.clusterip_class(sel), None

    def external_entry(
        self, sp: ServicePort, key: tuple[str, ...]
    ) -> tuple[str | None, Value | None]:
        if not sp.cluster_endpoints:
            return None, ("goto", names.REJECT)
        sel = self.selection(sp, key, sp.cluster_endpoints, local=False, backends=names.BACKENDS)
        if not sp.external_local:
            return self.external_class(sel), None
        local_sel = None
        if sp.local_endpoints:
            local_sel = self.selection(
                sp, key, sp.local_endpoints, local=True, backends=names.LOCAL_BACKENDS
            )
        # Without local endpoints, what the class chain does not short-circuit is dropped.
        return self.external_local_class(sel, local_sel), (None if local_sel else ("drop",))

    def service_port(self, sp: ServicePort) -> None:
        for entry in sp.entries:
            self.entry(sp, entry)
        for addr in sp.hairpin:
            self.element(names.HAIRPIN, (str(addr), str(addr)))

    # -- fixed structure ----------------------------------------------------

    def fixed_chains(self) -> None:
        mark = self.node.masquerade_mark
        self.chain(names.MARK_FOR_MASQUERADE, (MarkSet(mark),))
        hairpin = (
            Match((Field.CT_STATUS,), "dnat"),
            Match((Field.SADDR, Field.DADDR), SetRef(names.HAIRPIN)),
            MARK_MASQ,
        )
        self.chain(
            names.MASQUERADING,
            hairpin,
            (MarkTest(mark, set_=False), Verdict(VerdictKind.RETURN)),
            (MarkSet(mark, xor=True),),
            (Masquerade(),),
        )
        # Linux treats an ICMPv6 port unreachable as a soft error for a connecting TCP
        # socket (the client waits for its timeout), so TCP gets a reset instead.
        self.chain(
            names.REJECT,
            (Match((Field.L4PROTO,), "tcp"), Reject(tcp_reset=True)),
            (Reject(),),
            comment="refuse connections to Services without endpoints",
        )
        counting: tuple[tuple[Term, ...], ...] = ()
        if self.node.service_counters:
            # A lookup that only counts: the entry's element in service-ips is made anew
            # whenever its verdict changes (a new endpoint count), which would reset a
            # counter there; this set's elements live as long as the entry has endpoints.
            counting = ((Match(TUPLE, SetRef(names.SERVICE_COUNTERS)),),)
        self.chain(names.SERVICES, *counting, (VMap(TUPLE, names.SERVICE_IPS),))
        self.chain(names.ENDPOINTS_CHECK, (VMap(TUPLE, names.NO_ENDPOINT_SERVICES),))
        self.chain(
            names.FIREWALL_CHECK,
            (
                Match(TUPLE, SetRef(names.FIREWALL_IPS)),
                Match((*TUPLE, Field.SADDR), SetRef(names.FIREWALL_ALLOW), Op.NE),
                Verdict(VerdictKind.DROP),
            ),
            comment="loadBalancerSourceRanges",
        )
        unallocated = [
            (Match((Field.DADDR,), cidr_text(c)), Verdict(VerdictKind.DROP))
            for c in self.node.service_cidrs
        ]
        self.chain(
            names.CLUSTER_IPS_CHECK,
            (Match((Field.DADDR,), SetRef(names.CLUSTER_IPS)), _goto(names.REJECT)),
            *unallocated,
            comment="reject unused ports of ClusterIPs, drop unallocated ClusterIPs",
        )

    def base_chains(self) -> list[Chain]:
        jumps: dict[str, list[Rule]] = defaultdict(list)
        for base, target, new_only in JUMPS:
            new = (Match((Field.CT_STATE,), "new"),) if new_only else ()
            jumps[base].append(Rule((*new, _jump(target))))
        return [
            Chain(name, tuple(jumps[name]), base=BaseHook(ctype, hook, prio))
            for name, ctype, hook, prio in BASE_CHAINS
        ]

    def sets(self) -> list[Set]:
        self.elements[names.POD_CIDRS] = [Element((cidr_text(c),)) for c in self.node.pod_cidrs]
        counting = self.node.service_counters
        fixed = [
            Set(
                name,
                key,
                value,
                interval=interval,
                comment=comment,
                # Several ports of a Service share a ClusterIP and endpoints: one element each.
                elements=unique(self.elements.get(name, ())),
                counter=counting and name in COUNTED,
            )
            for name, key, value, interval, comment in SETS
            if counting or name != names.SERVICE_COUNTERS
        ]
        return fixed + sorted(self.port_sets.values(), key=lambda s: s.name)


@dataclass(frozen=True)
class Fragment:
    """What some Service ports add to a table: elements by set, the chains and the
    sets they use (shared ones like ``pick-3`` and ``backends-3`` included)."""

    elements: dict[str, tuple[Element, ...]]
    chains: dict[str, Chain]
    sets: dict[str, Set]


def fragment(node: FamilyNode, ports: Iterable[ServicePort], made: Made | None = None) -> Fragment:
    """The fragment of some Service ports; ``made`` is shared by the fragments of
    one state (its chains are made once: 0.4 s of 0.8 at 10,000 Services)."""
    b = _TableBuilder(node, made)
    for sp in ports:
        b.service_port(sp)
    return Fragment({name: unique(els) for name, els in b.elements.items()}, b.chains, b.port_sets)


def fixed_table(node: FamilyNode) -> Table:
    """A family's table without any Service: base chains, fixed chains, the fixed
    sets (only ``pod-cidrs`` holds elements)."""
    b = _TableBuilder(node)
    b.fixed_chains()
    return Table(
        family=node.family,
        name=names.TABLE,
        chains=(*b.chains.values(), *b.base_chains()),
        sets=tuple(b.sets()),
        comment=TABLE_COMMENT,
    )


def assemble(fixed: Table, fragments: Iterable[Fragment]) -> Table:
    """The fixed table with fragments merged in (elements unique by key, chains and
    the ports' sets by name)."""
    elements: dict[str, list[Element]] = defaultdict(list)
    chains = {c.name: c for c in fixed.chains if c.base is None}
    extra: dict[str, Set] = {}
    for f in fragments:
        for name, els in f.elements.items():
            elements[name].extend(els)
        chains.update(f.chains)
        extra.update(f.sets)
    sets = [
        s
        if not elements.get(s.name)
        else replace(s, elements=unique((*s.elements, *elements[s.name])))
        for s in (*fixed.sets, *sorted(extra.values(), key=lambda s: s.name))
    ]
    bases = tuple(c for c in fixed.chains if c.base is not None)
    return replace(fixed, chains=(*chains.values(), *bases), sets=tuple(sets))


def build_table(fs: FamilyState) -> Table:
    """The table for one family."""
    return assemble(fixed_table(fs.node), [fragment(fs.node, fs.service_ports)])


def present(has_ports: Mapping[Family, bool]) -> dict[Family, bool]:
    """Which families get a table, given which have Service ports: those, else IPv4
    alone (a node without Services still gets its checks)."""
    held = {f: has_ports.get(f, False) for f in (Family.IP, Family.IP6)}
    if not any(held.values()):
        held[Family.IP] = True
    return held


def build(state: ProxyState) -> Ruleset:
    """The desired ruleset: a table for every family :func:`present` names."""
    held = present({fs.node.family: bool(fs.service_ports) for fs in state.families})
    tables = tuple(build_table(fs) for fs in state.families if held[fs.node.family])
    absent = tuple(fs.node.family for fs in state.families if not held[fs.node.family])
    return Ruleset(tables, absent)
