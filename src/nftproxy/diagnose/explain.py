"""Where does a new connection go, and why: one connection evaluated against a
table, the rules as they are (built from manifests, or read back from the kernel).

The walk follows the kernel's order: a connection from outside the node (a pod or
a client) meets the prerouting hook, then input (to a node address) or forward and
postrouting; one from the node itself (one of its addresses, or loopback) meets
output, then postrouting, then, delivered to a node address, prerouting's filters
and input. In each hook the table's base chains run by priority; rules match on
the terms nftproxy writes (:mod:`nftproxy.nft.model`), with jumps, gotos, verdict
maps, marks and DNAT. ``numgen random`` splits the walk into its equally likely
branches, so the answer is every outcome with its probability. Dynamic sets
(ClientIP affinity) are empty for a new client: its first choice is random, and
later connections stick. Pure: no kernel is touched.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

from nftproxy.nft.model import (
    Chain,
    Dnat,
    DnatMap,
    Element,
    Expr,
    Field,
    Hook,
    Key,
    MarkSet,
    MarkTest,
    Masquerade,
    Match,
    Numgen,
    Op,
    Raw,
    Reject,
    Rule,
    Set,
    SetRef,
    SetUpdate,
    Table,
    TraceOn,
    Verdict,
    VerdictKind,
    VMap,
)
from nftproxy.nft.render import render_rule

DNAT, REJECT, DROP, ACCEPT = "dnat", "reject", "drop", "accept"


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection, as one branch of the walk sees it."""

    src: str
    dst: str
    port: int
    proto: str
    mark: int = 0
    dnat: bool = False
    masquerade: bool = False
    sticky: bool = False
    path: tuple[Step, ...] = ()
    iif: str = ""
    """The input interface's name ("" for the node's own traffic, or unknown)."""


@dataclass(frozen=True)
class Step:
    """A rule that decided something: where it is and what it matched."""

    hook: str
    chain: str
    rule: str
    element: str | None = None


@dataclass(frozen=True)
class Outcome:
    """One way the connection ends, with its probability."""

    probability: Fraction
    verdict: str
    packet: Packet


@dataclass
class _Hook:
    name: str
    chains: list[Chain]
    verdict: str = ACCEPT


@dataclass(frozen=True)
class _End:
    """How a chain walk ended: fell through (``None``), or a verdict."""

    verdict: str | None
    packet: Packet


@dataclass
class Explainer:
    """Evaluates connections against one table; ``local`` are the node's addresses."""

    table: Table
    local: frozenset[str]
    sets: dict[str, Set] = field(init=False)
    chains: dict[str, Chain] = field(init=False)

    def __post_init__(self) -> None:
        self.sets = {s.name: s for s in self.table.sets}
        self.chains = {c.name: c for c in self.table.chains}

    # -- the path -------------------------------------------------------------

    def explain(self, src: str, dst: str, port: int, proto: str, iif: str = "") -> list[Outcome]:
        """Every outcome of one new connection (arriving on ``iif``), most likely first."""
        start = Packet(src, dst, port, proto, iif=iif)
        from_node = self.is_local(src)
        first = (
            [(Hook.OUTPUT, False), (Hook.POSTROUTING, False)]
            if from_node
            else [(Hook.PREROUTING, False)]
        )
        ended, routed = self._through([(Fraction(1), start)], first)
        for prob, p in routed:  # after prerouting (or output) the route decides
            more, done = self._through([(prob, p)], self._route(p, from_node))
            ended += more
            ended += [(q, self._final(pk), pk) for q, pk in done]
        out = [Outcome(prob, verdict, pkt) for prob, verdict, pkt in ended]
        return sorted(out, key=lambda o: (-o.probability, o.verdict, o.packet.dst, o.packet.port))

    def _route(self, p: Packet, from_node: bool) -> list[tuple[Hook, bool]]:
        """The hooks after routing, each with whether only its filter chains run."""
        local = self.is_local(p.dst)
        if from_node:
            # Delivered over loopback: prerouting's filters (NAT is done) and input.
            return [(Hook.PREROUTING, True), (Hook.INPUT, False)] if local else []
        return (
            [(Hook.INPUT, False)] if local else [(Hook.FORWARD, False), (Hook.POSTROUTING, False)]
        )

    def _through(
        self, branches: list[tuple[Fraction, Packet]], hooks: list[tuple[Hook, bool]]
    ) -> tuple[list[tuple[Fraction, str, Packet]], list[tuple[Fraction, Packet]]]:
        """Run branches through hooks in order: the ones a verdict ended, and the
        ones that came through."""
        ended: list[tuple[Fraction, str, Packet]] = []
        for hook, filters_only in hooks:
            nxt: list[tuple[Fraction, Packet]] = []
            for prob, p in branches:
                for q, end in self._hook(p, hook, filters_only=filters_only):
                    if end.verdict != ACCEPT:
                        ended.append((prob * q, end.verdict or ACCEPT, end.packet))
                    else:
                        nxt.append((prob * q, end.packet))
            branches = nxt
        return ended, branches

    @staticmethod
    def _final(p: Packet) -> str:
        return DNAT if p.dnat else ACCEPT

    def _hook(
        self, p: Packet, hook: Hook, *, filters_only: bool = False
    ) -> Iterator[tuple[Fraction, _End]]:
        """The table's base chains on one hook, by priority; ACCEPT lets it go on."""
        bases = sorted(
            (c for c in self.table.chains if c.base is not None and c.base.hook == hook),
            key=lambda c: c.base.priority if c.base else 0,
        )
        if filters_only:
            bases = [c for c in bases if c.base is not None and c.base.type.value == "filter"]
        branches: list[tuple[Fraction, Packet]] = [(Fraction(1), p)]
        for chain in bases:
            nxt: list[tuple[Fraction, Packet]] = []
            for prob, pk in branches:
                for q, end in self._chain(pk, chain, hook.value):
                    verdict = end.verdict
                    if verdict is None:
                        assert chain.base is not None
                        verdict = chain.base.policy.value
                    if verdict in (ACCEPT, DNAT, "masquerade"):
                        nxt.append((prob * q, end.packet))
                    else:
                        yield prob * q, _End(verdict, end.packet)
            branches = nxt
        for prob, pk in branches:
            yield prob, _End(ACCEPT, pk)

    # -- chains and rules -----------------------------------------------------

    def _chain(
        self, p: Packet, chain: Chain, hook: str, depth: int = 0
    ) -> Iterator[tuple[Fraction, _End]]:
        """Walk a chain from its first rule: how it ends, per branch."""
        if depth > 32:
            yield Fraction(1), _End(DROP, p)  # a loop: the kernel refuses these
            return
        yield from self._rules(p, chain, list(chain.rules), hook, depth)

    def _rules(
        self, p: Packet, chain: Chain, rules: list[Rule], hook: str, depth: int
    ) -> Iterator[tuple[Fraction, _End]]:
        if not rules:
            yield Fraction(1), _End(None, p)
            return
        rule, rest = rules[0], rules[1:]
        for prob, result in self._rule(p, chain, rule, hook, depth):
            if isinstance(result, _End):
                yield prob, result
            else:  # the rule did not decide: the next one runs
                for q, end in self._rules(result, chain, rest, hook, depth):
                    yield prob * q, end

    def _rule(
        self, p: Packet, chain: Chain, rule: Rule, hook: str, depth: int
    ) -> Iterator[tuple[Fraction, _End | Packet]]:
        """One rule: its terms in order. Yields the packet (the rule let it go on)
        or how the chain ended."""
        step = Step(hook, chain.name, render_rule(rule, self.table.family))
        branches: list[tuple[Fraction, Packet]] = [(Fraction(1), p)]
        for term in rule.terms:
            nxt: list[tuple[Fraction, Packet]] = []
            for prob, pk in branches:
                for q, res in self._term(pk, term, step, depth):
                    if isinstance(res, _End):
                        yield prob * q, res
                    elif res is not None:
                        nxt.append((prob * q, res))
                    else:  # no match: the rule ends, the chain goes on
                        yield prob * q, pk
            branches = nxt
            if not branches:
                return
        yield from branches

    def _term(  # noqa: PLR0912 - one branch per term type
        self, p: Packet, term: object, step: Step, depth: int
    ) -> Iterator[tuple[Fraction, _End | Packet | None]]:
        """A term: the packet goes on (maybe changed), stops matching (None), or ends."""
        if isinstance(term, Match):
            for prob, values in self._keys(p, term.key):
                hit = self._matches(values, term.value)
                yield prob, (p if hit == (term.op == Op.EQ) else None)
        elif isinstance(term, MarkTest):
            yield Fraction(1), (p if bool(p.mark & term.bits) == term.set_ else None)
        elif isinstance(term, MarkSet):
            mark = p.mark ^ term.bits if term.xor else p.mark | term.bits
            yield Fraction(1), dataclasses.replace(p, mark=mark)
        elif isinstance(term, SetUpdate):
            yield Fraction(1), dataclasses.replace(p, sticky=True)
        elif isinstance(term, Verdict):
            yield from self._verdict(p, term.kind, term.chain, step, depth)
        elif isinstance(term, VMap):
            for prob, values in self._keys(p, term.key):
                element = self._lookup(term.map, values)
                if element is None or element.value is None:
                    yield prob, None
                    continue
                at = dataclasses.replace(step, element=_describe(element))
                kind, target = (
                    element.value[0],
                    (element.value[1] if len(element.value) > 1 else None),
                )
                for q, res in self._verdict(p, VerdictKind(kind), target, at, depth):
                    yield prob * q, res
        elif isinstance(term, (DnatMap, Dnat)):
            for prob, (addr, port, described) in self._dnat_targets(p, term):
                if addr is None:
                    yield prob, None
                    continue
                at = dataclasses.replace(step, element=described)
                done = dataclasses.replace(p, dst=addr, port=port, dnat=True, path=(*p.path, at))
                yield prob, _End(DNAT, done)
        elif isinstance(term, Masquerade):
            yield (
                Fraction(1),
                _End("masquerade", dataclasses.replace(p, masquerade=True, path=(*p.path, step))),
            )
        elif isinstance(term, Reject):
            yield Fraction(1), _End(REJECT, dataclasses.replace(p, path=(*p.path, step)))
        elif isinstance(term, TraceOn):
            yield Fraction(1), p
        else:
            assert isinstance(term, Raw)
            yield Fraction(1), None  # a term nftproxy does not write: taken as not matching

    def _verdict(
        self, p: Packet, kind: VerdictKind, target: str | None, step: Step, depth: int
    ) -> Iterator[tuple[Fraction, _End | Packet | None]]:
        if kind in (VerdictKind.ACCEPT, VerdictKind.DROP):
            yield Fraction(1), _End(kind.value, dataclasses.replace(p, path=(*p.path, step)))
        elif kind == VerdictKind.RETURN:
            yield Fraction(1), _End(None, p)
        else:
            chain = self.chains.get(target or "")
            if chain is None:
                yield Fraction(1), _End(DROP, p)
                return
            walked = dataclasses.replace(p, path=(*p.path, step))
            for prob, end in self._chain(walked, chain, step.hook, depth + 1):
                if kind == VerdictKind.GOTO or end.verdict is not None:
                    yield prob, end
                else:  # a jump that returned: the calling rule goes on
                    yield prob, end.packet

    # -- lookups --------------------------------------------------------------

    def _keys(self, p: Packet, key: Key) -> Iterator[tuple[Fraction, tuple[str, ...]]]:
        """The values of a key, one branch per value of each numgen in it."""
        parts: list[list[str]] = [self._expr(p, e) for e in key]
        combos: list[tuple[str, ...]] = [()]
        for values in parts:
            combos = [(*c, v) for c in combos for v in values]
        prob = Fraction(1, len(combos))
        for combo in combos:
            yield prob, combo

    def _expr(self, p: Packet, expr: Expr) -> list[str]:
        if isinstance(expr, Numgen):
            return [str(expr.offset + i) for i in range(expr.modulus)]
        return [self._field(p, expr)]

    def _field(self, p: Packet, f: Field) -> str:  # noqa: PLR0911
        if f == Field.SADDR:
            return p.src
        if f == Field.DADDR:
            return p.dst
        if f == Field.L4PROTO:
            return p.proto
        if f == Field.DPORT:
            return str(p.port)
        if f == Field.MARK:
            return str(p.mark)
        if f == Field.CT_STATE:
            return "new"
        if f == Field.CT_STATUS:
            return "dnat" if p.dnat else ""
        if f == Field.IIFNAME:
            return p.iif
        return "local" if self.is_local(p.src) else "unicast"

    def _matches(self, values: tuple[str, ...], want: str | tuple[str, ...] | SetRef) -> bool:
        if isinstance(want, SetRef):
            return self._lookup(want.name, values) is not None
        options = want if isinstance(want, tuple) else (want,)
        return any(_component(values[0], o) for o in options)

    def _lookup(self, name: str, values: tuple[str, ...]) -> Element | None:
        s = self.sets.get(name)
        if s is None or s.dynamic:
            return None  # dynamic sets (affinity) hold nothing for a new client
        for e in s.elements:
            if len(e.key) == len(values) and all(map(_component, values, e.key)):
                return e
        return None

    def _dnat_targets(
        self, p: Packet, term: DnatMap | Dnat
    ) -> Iterator[tuple[Fraction, tuple[str | None, int, str | None]]]:
        if isinstance(term, Dnat):
            yield Fraction(1), (term.addr, term.port, None)
            return
        for prob, values in self._keys(p, term.key):
            element = self._lookup(term.map, values)
            if element is None or element.value is None:
                yield prob, (None, 0, None)
            else:
                yield prob, (element.value[0], int(element.value[1]), _describe(element))

    def is_local(self, addr: str) -> bool:
        """Whether the node holds addr (its addresses and loopback)."""
        return addr in self.local or ipaddress.ip_address(addr).is_loopback


def _component(value: str, element: str) -> bool:
    """A value against one element component: equal, or inside its CIDR or range."""
    if value == element:
        return True
    if element.endswith("*"):  # an interface name prefix
        return value.startswith(element[:-1])
    if "/" in element:
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(element, strict=False)
        except ValueError:
            return False
    if "-" in element and element.replace("-", "").isdigit() and value.isdigit():
        low, high = element.split("-")
        return int(low) <= int(value) <= int(high)
    return False


def _describe(e: Element) -> str:
    text = " . ".join(e.key)
    if e.value is not None:
        text += " : " + " ".join(e.value)
    return text + (f' comment "{e.comment}"' if e.comment else "")


def summary(outcomes: Iterable[Outcome]) -> dict[str, object]:
    """The JSON answer: the verdict, endpoints with probabilities, masquerade."""
    outcomes = list(outcomes)
    endpoints: dict[tuple[str, int], Fraction] = {}
    for o in outcomes:
        if o.verdict == DNAT:
            key = (o.packet.dst, o.packet.port)
            endpoints[key] = endpoints.get(key, Fraction(0)) + o.probability
    verdicts = sorted({o.verdict for o in outcomes})
    return {
        "verdict": verdicts[0] if len(verdicts) == 1 else verdicts,
        "endpoints": [
            {"ip": ip, "port": port, "probability": float(prob)}
            for (ip, port), prob in sorted(endpoints.items())
        ],
        "masquerade": any(o.packet.masquerade for o in outcomes),
        "service": _service(outcomes),
        "sticky": any(o.packet.sticky for o in outcomes),
        "path": [dataclasses.asdict(s) for s in (outcomes[0].packet.path if outcomes else ())],
    }


def _service(outcomes: list[Outcome]) -> str | None:
    for o in outcomes:
        for step in o.packet.path:
            if step.element and 'comment "' in step.element:
                return step.element.split('comment "', 1)[1].rstrip('"')
    return None
