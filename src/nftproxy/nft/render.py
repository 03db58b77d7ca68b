"""The one place that writes nft syntax.

``render_script`` prints a whole ruleset as one file for ``nft -f``: for every
family it first creates and deletes nftproxy's table (so the load works whether
or not the table exists), then declares it anew. nft runs a file as one
transaction, so the replacement is atomic: there is no moment without rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator

from nftproxy.nft.model import (
    BaseHook,
    Chain,
    DataType,
    Dnat,
    DnatMap,
    Element,
    Expr,
    Family,
    Field,
    Key,
    MarkSet,
    MarkTest,
    Masquerade,
    Match,
    Numgen,
    Raw,
    Reject,
    Rule,
    Ruleset,
    Set,
    SetRef,
    SetUpdate,
    Table,
    Term,
    TraceOn,
    Verdict,
    VMap,
)
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    Batch,
    Change,
    DeleteChain,
    DeleteSet,
    DeleteTable,
    FlushChain,
    FlushSet,
    Transaction,
    WakeTable,
)

COMMENT_MAX = 128
"""nft refuses a comment longer than 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN)."""
COMMENT_SAFE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
"""What a comment may hold: printable ASCII but ``"`` and ``\\``. nft's quoted
strings have no escapes, so no quote, backslash or control character may reach it."""

_FIELDS = {
    Field.L4PROTO: "meta l4proto",
    Field.DPORT: "th dport",
    Field.MARK: "meta mark",
    Field.CT_STATE: "ct state",
    Field.CT_STATUS: "ct status",
    Field.FIB_SADDR_TYPE: "fib saddr type",
    Field.IIFNAME: "iifname",
}

_TYPES = {
    DataType.PROTO: "inet_proto",
    DataType.SERVICE: "inet_service",
    DataType.VERDICT: "verdict",
}

# The expression whose type a ``typeof`` declaration borrows, per key component.
_TYPEOF: dict[DataType, Expr] = {
    DataType.ADDR: Field.DADDR,
    DataType.PROTO: Field.L4PROTO,
    DataType.SERVICE: Field.DPORT,
    DataType.INDEX: Numgen(1),
}


def render_expr(expr: Expr, family: Family) -> str:
    """Render one key component."""
    if isinstance(expr, Numgen):
        offset = f" offset {expr.offset}" if expr.offset else ""
        return f"numgen random mod {expr.modulus}{offset}"
    if expr in (Field.SADDR, Field.DADDR):
        return f"{family.value} {expr.value}"
    return _FIELDS[expr]


def render_key(key: Key, family: Family) -> str:
    """Render a key: components joined by the concatenation operator."""
    return " . ".join(render_expr(e, family) for e in key)


def _render_value(value: str | tuple[str, ...] | SetRef) -> str:
    if isinstance(value, SetRef):
        return f"@{value.name}"
    if isinstance(value, tuple):
        return "{ " + ", ".join(value) + " }"
    return value


def format_addr_port(addr: str, port: int) -> str:
    """``ADDR:PORT``, with brackets around an IPv6 address."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def render_term(term: Term, family: Family) -> str:  # noqa: PLR0911, PLR0912 - a branch per term type
    """Render one match or statement."""
    if isinstance(term, Match):
        op = "" if term.op == "==" else "!= "
        if term.key == (Field.IIFNAME,) and isinstance(term.value, str):
            return f"iifname {op}{quoted(term.value)}"  # an interface name is a string
        return f"{render_key(term.key, family)} {op}{_render_value(term.value)}"
    if isinstance(term, MarkTest):
        return f"meta mark & {term.bits:#x} {'!=' if term.set_ else '=='} 0"
    if isinstance(term, Verdict):
        return term.kind.value if term.chain is None else f"{term.kind.value} {term.chain}"
    if isinstance(term, Reject):
        return "reject with tcp reset" if term.tcp_reset else "reject"
    if isinstance(term, VMap):
        return f"{render_key(term.key, family)} vmap @{term.map}"
    if isinstance(term, DnatMap):
        return f"dnat to {render_key(term.key, family)} map @{term.map}"
    if isinstance(term, Dnat):
        return f"dnat to {format_addr_port(term.addr, term.port)}"
    if isinstance(term, MarkSet):
        return f"meta mark set meta mark {'xor' if term.xor else 'or'} {term.bits:#x}"
    if isinstance(term, Masquerade):
        return "masquerade fully-random"
    if isinstance(term, SetUpdate):
        return f"update @{term.set} {{ {render_key(term.key, family)} }}"
    if isinstance(term, TraceOn):
        return "meta nftrace set 1"
    if isinstance(term, Raw):
        return f"<not written by nftproxy: {term.text}>"
    raise TypeError(f"unknown rule term {term!r}")


class UnsafeTextError(ValueError):
    """Text that must not reach nft: it would break the script or change its meaning."""


def quoted(text: str) -> str:
    """text in double quotes, as nft reads a comment; refused unless it is safe.

    nft's quoted strings know no escapes: a quote would end the string and let the
    rest be read as commands. The builder makes every comment safe
    (:func:`nftproxy.ruleset.names.comment`); this is the last check before nft.
    """
    if len(text.encode()) > COMMENT_MAX or not COMMENT_SAFE.fullmatch(text):
        raise UnsafeTextError(f"refusing to write {text!r} into an nft comment")
    return f'"{text}"'


def _comment(text: str | None) -> str:
    return "" if text is None else f" comment {quoted(text)}"


def render_rule(rule: Rule, family: Family) -> str:
    """Render one rule body (what follows ``add rule FAMILY TABLE CHAIN``)."""
    return " ".join(render_term(t, family) for t in rule.terms) + _comment(rule.comment)


def _type_decl(s: Set, family: Family) -> str:
    parts = (*s.key, *s.value)
    if DataType.INDEX in parts:
        key = render_key(tuple(_TYPEOF[t] for t in s.key), family)
        value = render_key(tuple(_TYPEOF[t] for t in s.value), family)
        return f"typeof {key}" + (f" : {value}" if s.value else "")
    addr = "ipv4_addr" if family == Family.IP else "ipv6_addr"

    def names(types: Iterable[DataType]) -> str:
        return " . ".join(addr if t == DataType.ADDR else _TYPES[t] for t in types)

    return f"type {names(s.key)}" + (f" : {names(s.value)}" if s.value else "")


def render_element(element: Element, s: Set) -> str:
    """Render one element as it appears inside ``{ ... }``."""
    text = " . ".join(element.key) + _comment(element.comment)
    if element.value is not None:
        sep = " " if s.value == (DataType.VERDICT,) else " . "
        text += " : " + sep.join(element.value)
    return text


def _render_set(s: Set, family: Family) -> Iterator[str]:
    kind = "map" if s.is_map else "set"
    yield f"\t{kind} {s.name} {{"
    yield f"\t\t{_type_decl(s, family)}"
    flags = [f for f, on in (("dynamic", s.dynamic), ("interval", s.interval)) if on]
    if s.timeout is not None:
        flags.append("timeout")
    if s.size is not None:
        yield f"\t\tsize {s.size}"
    if flags:
        yield f"\t\tflags {','.join(flags)}"
    if s.timeout is not None:
        yield f"\t\ttimeout {s.timeout}s"
    if s.counter:
        yield "\t\tcounter"
    if s.comment:
        yield f"\t\tcomment {quoted(s.comment)}"
    if s.elements:
        body = ",\n\t\t\t     ".join(render_element(e, s) for e in s.elements)
        yield f"\t\telements = {{ {body} }}"
    yield "\t}"


def hook_line(b: BaseHook) -> str:
    """A base chain's ``type ... hook ... priority ...; policy ...;`` line."""
    return (
        f"type {b.type.value} hook {b.hook.value} priority {b.priority}; policy {b.policy.value};"
    )


def _render_chain(chain: Chain, family: Family) -> Iterator[str]:
    yield f"\tchain {chain.name} {{"
    if chain.comment:
        yield f"\t\tcomment {quoted(chain.comment)}"
    if chain.base is not None:
        yield f"\t\t{hook_line(chain.base)}"
    for rule in chain.rules:
        yield f"\t\t{render_rule(rule, family)}"
    yield "\t}"


def chain_targets(chain: Chain) -> Iterator[str]:
    """The chains that ``chain``'s rules jump or go to."""
    for rule in chain.rules:
        for term in rule.terms:
            if isinstance(term, Verdict) and term.chain is not None:
                yield term.chain


def set_references(chain: Chain) -> Iterator[str]:
    """The sets and maps a chain's rules use."""
    for rule in chain.rules:
        for term in rule.terms:
            if isinstance(term, (VMap, DnatMap)):
                yield term.map
            elif isinstance(term, SetUpdate):
                yield term.set
            elif isinstance(term, Match) and isinstance(term.value, SetRef):
                yield term.value.name


def ordered_chains(chains: Iterable[Chain]) -> list[Chain]:
    """Chains ordered so that every jump target comes before the chain using it."""
    by_name = {c.name: c for c in chains}
    done: dict[str, Chain] = {}
    visiting: set[str] = set()

    def visit(chain: Chain) -> None:
        if chain.name in done or chain.name in visiting:
            return
        visiting.add(chain.name)
        for target in chain_targets(chain):
            if target in by_name:
                visit(by_name[target])
        done[chain.name] = chain

    for chain in by_name.values():
        visit(chain)
    return list(done.values())


def render_table(table: Table) -> str:
    """Render one table as a declarative block."""
    lines = [f"table {table.family.value} {table.name} {{"]
    if table.dormant:
        lines.append("\tflags dormant")
    if table.comment:
        lines.append(f"\tcomment {quoted(table.comment)}")
    for s in table.sets:
        lines.extend(_render_set(s, table.family))
    for chain in ordered_chains(table.chains):
        lines.extend(_render_chain(chain, table.family))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_script(ruleset: Ruleset, table_name: str) -> str:
    """The whole ruleset as one atomic ``nft -f`` script that replaces our tables."""
    out: list[str] = []
    families = [t.family for t in ruleset.tables] + list(ruleset.absent)
    for family in families:
        out.append(f"add table {family.value} {table_name}\n")
        out.append(f"delete table {family.value} {table_name}\n")
    out.extend(render_table(t) for t in ruleset.tables)
    return "".join(out)


def _declare_set(s: Set, family: Family) -> str:
    lines = list(_render_set(dataclasses.replace(s, elements=()), family))[1:-1]
    return f"{s.name} {{ {'; '.join(line.strip() for line in lines)}; }}"


def _declare_chain(chain: Chain) -> str:
    parts = []
    if chain.base is not None:
        parts.append(hook_line(chain.base))
    if chain.comment:
        parts.append(f"comment {quoted(chain.comment)};")
    return f"{chain.name} {{ {' '.join(parts)} }}" if parts else chain.name


def render_change(change: Change, family: Family, table: str) -> str:  # noqa: PLR0911
    """One change as one nft command."""
    where = f"{family.value} {table}"
    if isinstance(change, (AddTable, WakeTable)):  # "add table" clears flags it does not set
        return f"add table {where}"
    if isinstance(change, DeleteTable):
        return f"delete table {where}"
    if isinstance(change, AddSet):
        kind = "map" if change.set.is_map else "set"
        return f"add {kind} {where} {_declare_set(change.set, family)}"
    if isinstance(change, DeleteSet):
        return f"delete set {where} {change.name}"
    if isinstance(change, FlushSet):
        return f"flush set {where} {change.name}"
    if isinstance(change, AddChain):
        return f"add chain {where} {_declare_chain(change.chain)}"
    if isinstance(change, FlushChain):
        return f"flush chain {where} {change.name}"
    if isinstance(change, DeleteChain):
        return f"delete chain {where} {change.name}"
    if isinstance(change, AddRule):
        return f"add rule {where} {change.chain} {render_rule(change.rule, family)}"
    verb = "add" if isinstance(change, AddElements) else "delete"
    if verb == "delete":  # deleting goes by key: no values, no comments
        items = [" . ".join(e.key) for e in change.elements]
    else:
        items = [render_element(e, change.set) for e in change.elements]
    return f"{verb} element {where} {change.set.name} {{ {', '.join(items)} }}"


def render_transaction(tx: Transaction) -> str:
    """A transaction as the nft script libnftables runs (one command a line)."""
    return "".join(render_change(c, tx.family, tx.table) + "\n" for c in tx.changes)


def render_batch(batch: Batch) -> str:
    """A batch as the one script libnftables runs."""
    body = (
        render_script(batch.load, batch.table)
        if batch.load is not None
        else "".join(map(render_transaction, batch.transactions))
    )
    return body + "".join(map(render_transaction, batch.after))
