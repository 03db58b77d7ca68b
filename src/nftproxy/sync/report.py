"""What differs between two states, as a person (or a program) wants to read it.

Built from a planned transaction: what it adds is missing from the kernel, what
it deletes is unexpected there, what it does both to is changed. Every
difference is attributed to the Service it belongs to when that can be told
(from element comments, entry addresses and per-Service object names).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from nftproxy.nft.model import Family, Table
from nftproxy.nft.render import hook_line, quoted, render_element, render_rule
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
    Transaction,
    WakeTable,
)

SHARED = "(shared structure)"
_ADDED_OR_NOT = {True: "missing", False: "unexpected"}
_NAMED = re.compile(r"[A-Z2-7]{8}-([^_]+?)(?:__|$)")


@dataclass(frozen=True)
class Difference:
    """One object that is not as it should be."""

    family: str
    status: str  # missing | unexpected | changed
    kind: str  # table | set | chain | rule | element
    where: str  # the set or chain it is in (or the object's own name)
    text: str
    service: str


class _Owners:
    """Which Service an element key or object name belongs to."""

    def __init__(self, tables: Iterable[Table | None]) -> None:
        self.by_key: dict[tuple[str, ...], str] = {}
        for t in tables:
            for s in t.sets if t else ():
                for e in s.elements:
                    if e.comment:
                        self.by_key[e.key[:3]] = e.comment
                        self.by_key[e.key[:1]] = e.comment

    def of_key(self, key: tuple[str, ...]) -> str:
        return self.by_key.get(key[:3]) or self.by_key.get(key[:1]) or SHARED

    @staticmethod
    def of_name(name: str) -> str:
        m = _NAMED.search(name)
        return m.group(1) if m else SHARED


def differences(
    txs: Iterable[Transaction],
    desired: dict[Family, Table | None],
    current: dict[Family, Table | None],
) -> list[Difference]:
    """Every difference a set of transactions repairs."""
    owners = _Owners([*desired.values(), *current.values()])
    out: list[Difference] = []
    for tx in txs:
        fam = tx.family.value
        want, have = desired.get(tx.family), current.get(tx.family)
        added = {c.chain.name for c in tx.changes if isinstance(c, AddChain)}
        removed = {c.name for c in tx.changes if isinstance(c, DeleteChain)}
        elems: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
        for c in tx.changes:
            if isinstance(c, (AddTable, DeleteTable)):
                status = "missing" if isinstance(c, AddTable) else "unexpected"
                out.append(Difference(fam, status, "table", tx.table, tx.table, SHARED))
            elif isinstance(c, WakeTable):
                text = "flags dormant: every rule off"
                out.append(Difference(fam, "changed", "table", tx.table, text, SHARED))
            elif isinstance(c, (AddSet, DeleteSet)):
                name = c.set.name if isinstance(c, AddSet) else c.name
                status = "missing" if isinstance(c, AddSet) else "unexpected"
                out.append(Difference(fam, status, "set", name, name, owners.of_name(name)))
            elif isinstance(c, (AddElements, DeleteElements)):
                for e in c.elements:
                    text = render_element(e._replace(comment=None), c.set)
                    verb = "+" if isinstance(c, AddElements) else "-"
                    elems[(c.set.name, e.key)].append(f"{verb}{text}")
        for (set_name, key), texts in elems.items():
            if len(texts) == 2 and texts[0][1:] == texts[1][1:]:
                continue  # written again only because the chain it names was made anew
            status = "changed" if len(texts) > 1 else _ADDED_OR_NOT[texts[0][0] == "+"]
            text = " -> ".join(t[1:] for t in texts)  # deletions come first: old -> new
            out.append(Difference(fam, status, "element", set_name, text, owners.of_key(key)))
        for name in sorted(added - removed):
            out.append(Difference(fam, "missing", "chain", name, name, owners.of_name(name)))
        for name in sorted(removed - added):
            out.append(Difference(fam, "unexpected", "chain", name, name, owners.of_name(name)))
        for name in sorted(added & removed):  # made anew: hook, priority, policy or comment
            text = f"{_definition(have, name)} -> {_definition(want, name)}"
            out.append(Difference(fam, "changed", "chain", name, text, owners.of_name(name)))
        flushed = {c.name for c in tx.changes if isinstance(c, FlushChain)} - removed - added
        out += _rule_differences(fam, flushed, want, have, owners)
    return out


def _definition(table: Table | None, name: str) -> str:
    chain = next((c for c in table.chains if c.name == name), None) if table else None
    text = hook_line(chain.base) if chain and chain.base else "regular chain"
    return text + (f" comment {quoted(chain.comment)}" if chain and chain.comment else "")


def _rule_differences(
    fam: str, chains: set[str], want: Table | None, have: Table | None, owners: _Owners
) -> list[Difference]:
    family = Family(fam)
    w = {c.name: c for c in want.chains} if want else {}
    h = {c.name: c for c in have.chains} if have else {}
    out = []
    for name in sorted(chains):
        wanted = [render_rule(r, family) for r in w[name].rules] if name in w else []
        held = [render_rule(r, family) for r in h[name].rules] if name in h else []
        if wanted == held:
            continue  # written again only because a set or chain it uses was made anew
        for text in wanted:
            if text not in held:
                out.append(Difference(fam, "missing", "rule", name, text, owners.of_name(name)))
        for text in held:
            if text not in wanted:
                out.append(Difference(fam, "unexpected", "rule", name, text, owners.of_name(name)))
        if not out or out[-1].where != name:
            owner = owners.of_name(name)
            out.append(Difference(fam, "changed", "chain", name, "rules out of order", owner))
    return out


def as_dicts(diffs: list[Difference]) -> list[dict[str, str]]:
    """For ``--json``."""
    return [asdict(d) for d in diffs]


def as_text(diffs: list[Difference]) -> str:
    """Grouped by Service, shared structure last."""
    groups: dict[str, list[Difference]] = defaultdict(list)
    for d in diffs:
        groups[d.service].append(d)
    lines = []
    for service in sorted(groups, key=lambda s: (s == SHARED, s)):
        lines.append(f"{service}:")
        for d in groups[service]:
            lines.append(f"  {d.status:<10} {d.family:<3} {d.kind:<7} {d.where}: {d.text}")
    return "\n".join(lines) + ("\n" if lines else "")
