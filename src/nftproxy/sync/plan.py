"""``plan(desired, current)``: the smallest transaction from one table to another. Pure.

The same function serves the incremental sync (current = what was applied last)
and drift repair (current = what the kernel holds, read back by
:mod:`nftproxy.nft.read`). Sets and chains are compared by definition, rules by
their terms, elements by key and value; the elements of dynamic sets (client
affinity) belong to the kernel and are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from nftproxy.nft.model import (
    Chain,
    DnatMap,
    Element,
    Family,
    Set,
    Table,
)
from nftproxy.nft.render import chain_targets, ordered_chains, set_references
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    Change,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
    Transaction,
    WakeTable,
)
from nftproxy.ruleset import names


def _definition(s: Set) -> tuple[object, ...]:
    return (s.key, s.value, s.interval, s.timeout)


def _chain_definition(c: Chain) -> tuple[object, ...]:
    # The kernel keeps a chain's comment when "add chain" names another one: a chain
    # whose comment changes is made anew, like one whose hook changes.
    return (c.base, c.comment)


def _load_all(desired: Table) -> list[Change]:
    changes: list[Change] = [AddTable()]
    changes += [AddSet(s) for s in desired.sets]
    chains = ordered_chains(desired.chains)
    changes += [AddChain(c) for c in chains]
    changes += [AddRule(c.name, r) for c in chains for r in c.rules]
    changes += [AddElements(s, s.elements) for s in desired.sets if s.elements]
    return changes


_ABSENT = object()


def _element_diff(
    want: Set, have: Set, remade: set[str]
) -> tuple[tuple[Element, ...], tuple[Element, ...]]:
    """Elements to delete from and to add to have, so that it holds want's; those that
    name a chain made anew (``remade``) go and come back around it."""
    if want.dynamic or want.name == names.APPLIED:  # the kernel's, or sync's own marker
        return (), ()
    have_by_key = {e.key: e.value for e in have.elements}
    want_by_key = {e.key: e.value for e in want.elements}

    def differs(value: object, other: object) -> bool:
        return value != other or (
            bool(remade) and isinstance(value, tuple) and len(value) == 2 and value[1] in remade
        )

    stale = tuple(e for e in have.elements if differs(want_by_key.get(e.key, _ABSENT), e.value))
    fresh = tuple(e for e in want.elements if differs(have_by_key.get(e.key, _ABSENT), e.value))
    return stale, fresh


@dataclass
class _Scope:
    """What a diff replaces: sets made anew or dropped, chains dropped or rewritten."""

    recreate_sets: set[str]
    drop_sets: set[str]
    drop_chains: set[str]
    rewrite: set[str]
    remade_chains: set[str]

    @property
    def replaced_sets(self) -> set[str]:
        return self.recreate_sets | self.drop_sets


def _scope(
    want_sets: dict[str, Set],
    have_sets: dict[str, Set],
    want_chains: dict[str, Chain],
    have_chains: dict[str, Chain],
) -> _Scope:
    recreate = {
        n
        for n, s in have_sets.items()
        if n in want_sets and _definition(s) != _definition(want_sets[n])
    }
    drop_chains = {
        n
        for n, c in have_chains.items()
        if n not in want_chains or _chain_definition(c) != _chain_definition(want_chains[n])
    }
    remade = drop_chains & set(want_chains)

    def rewritten(replaced: set[str]) -> set[str]:
        return {
            n
            for n, c in want_chains.items()
            if n in have_chains
            and n not in drop_chains
            and (
                c.rules != have_chains[n].rules
                or set(set_references(c)) & replaced
                or set(chain_targets(c)) & remade
            )
        }

    drop_sets = set(have_sets) - set(want_sets)
    rewrite = rewritten(recreate | drop_sets)
    # nft 1.0.6 refuses a new "dnat to ... map @m" rule when @m was made by an earlier
    # transaction and its typeof value holds "th dport" ("conflicting protocols
    # specified: tcp vs. th"); made in the same transaction, it is accepted. So a
    # transaction that writes such a rule makes the map anew too.
    written = [
        c
        for n, c in want_chains.items()
        if n in rewrite or n not in have_chains or n in drop_chains
    ]
    dnat_maps = {t.map for c in written for r in c.rules for t in r.terms if isinstance(t, DnatMap)}
    if dnat_maps & (set(have_sets) - recreate):
        recreate |= dnat_maps & set(have_sets)
        rewrite = rewritten(recreate | drop_sets)
    return _Scope(recreate, drop_sets, drop_chains, rewrite, remade)


def _element_changes(
    want_sets: dict[str, Set], have_sets: dict[str, Set], scope: _Scope
) -> tuple[list[Change], list[Change]]:
    """Element deletions and additions, for the sets that stay."""
    stale: list[Change] = []
    fresh: list[Change] = []
    for name, want in want_sets.items():
        if name in have_sets and name not in scope.recreate_sets:
            out, add = _element_diff(want, have_sets[name], scope.remade_chains)
            if out:
                stale.append(DeleteElements(want, out))
            if add:
                fresh.append(AddElements(want, add))
        elif want.elements:
            fresh.append(AddElements(want, want.elements))
    return stale, fresh


def _diff(desired: Table, current: Table) -> list[Change]:
    want_sets = {s.name: s for s in desired.sets}
    have_sets = {s.name: s for s in current.sets}
    want_chains = {c.name: c for c in desired.chains}
    have_chains = {c.name: c for c in current.chains}
    scope = _scope(want_sets, have_sets, want_chains, have_chains)
    replaced = scope.replaced_sets
    # Chains that go or change, and everything that uses a set that goes, lose their rules first.
    flush = sorted(
        scope.rewrite
        | {n for n in scope.drop_chains if have_chains[n].rules}
        | {n for n, c in have_chains.items() if set(set_references(c)) & replaced}
    )
    stale, fresh = _element_changes(want_sets, have_sets, scope)
    ordered = ordered_chains(desired.chains)
    new_chains = [c for c in ordered if c.name not in have_chains or c.name in scope.drop_chains]
    changes: list[Change] = [FlushChain(n) for n in flush]
    changes += stale
    changes += [DeleteSet(n) for n in sorted(replaced)]
    changes += [DeleteChain(n) for n in sorted(scope.drop_chains)]
    changes += [
        AddSet(s) for n, s in want_sets.items() if n not in have_sets or n in scope.recreate_sets
    ]
    changes += [AddChain(c) for c in new_chains]
    changes += [
        AddRule(c.name, r)
        for c in ordered
        if c.name in scope.rewrite or c in new_chains
        for r in c.rules
    ]
    changes += fresh
    return changes


def plan(desired: Table | None, current: Table | None, family: Family, table: str) -> Transaction:
    """The changes that turn current into desired (either may be absent)."""
    if desired is None:
        changes: list[Change] = [DeleteTable()] if current is not None else []
    elif current is None:
        changes = _load_all(desired)
    else:
        changes = [WakeTable()] if current.dormant else []
        changes += _diff(desired, current)
    return Transaction(family, table, tuple(changes))


@dataclass(frozen=True)
class Summary:
    """How many objects a transaction adds, changes and removes."""

    added: int = 0
    changed: int = 0
    removed: int = 0

    def __add__(self, other: Summary) -> Summary:
        return Summary(
            self.added + other.added, self.changed + other.changed, self.removed + other.removed
        )

    def __str__(self) -> str:
        return f"{self.added} added, {self.changed} changed, {self.removed} removed"


def summarize(tx: Transaction) -> Summary:
    """Count objects (tables, sets, chains, elements) by what the transaction does to them."""
    added: set[tuple[str, ...]] = set()
    removed: set[tuple[str, ...]] = set()
    rewritten: set[str] = set()
    elements = _element_counts(tx)
    for c in tx.changes:
        if isinstance(c, (AddTable, DeleteTable, WakeTable)):
            if not isinstance(c, DeleteTable):
                added.add(("table",))
            if not isinstance(c, AddTable):
                removed.add(("table",))
        elif isinstance(c, AddSet):
            added.add(("set", c.set.name))
        elif isinstance(c, DeleteSet):
            removed.add(("set", c.name))
        elif isinstance(c, AddChain):
            added.add(("chain", c.chain.name))
        elif isinstance(c, DeleteChain):
            removed.add(("chain", c.name))
        elif isinstance(c, FlushChain):
            rewritten.add(c.name)
    changed = added & removed
    changed_chains = {("chain", n) for n in rewritten} - removed - added
    objects = Summary(
        len(added - changed), len(changed) + len(changed_chains), len(removed - changed)
    )
    return objects + elements


def _element_counts(tx: Transaction) -> Summary:
    """The elements a transaction adds, changes (deletes and adds again) and removes.
    A set's keys are its own: no change lists one twice, so only a set that both
    loses and gains elements needs its keys compared (a fresh load: none does)."""
    adds: dict[str, list[tuple[str, ...]]] = {}
    deletes: dict[str, list[tuple[str, ...]]] = {}
    for c in tx.changes:
        if isinstance(c, (AddElements, DeleteElements)):
            bucket = adds if isinstance(c, AddElements) else deletes
            bucket.setdefault(c.set.name, []).extend(e.key for e in c.elements)
    total = Summary()
    for name in adds.keys() | deletes.keys():
        plus, minus = adds.get(name, []), deletes.get(name, [])
        both = len(set(plus) & set(minus)) if plus and minus else 0
        total += Summary(len(plus) - both, both, len(minus) - both)
    return total
