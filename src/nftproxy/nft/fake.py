"""An in-memory kernel for fast tests: applies typed batches to tables kept as
plain objects, as strictly as nf_tables (a batch is atomic; deleting or flushing
what is not there, adding a rule to a missing chain, deleting a chain that still
has rules, adding an element whose key holds another value are all refused).

It does not model what only the kernel knows (hooks, packet paths, nft 1.0.6's
parser quirks): the real kernel's tests cover those; this one lets a property
test run thousands of sync sequences.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from nftproxy.nft.conntrack import StalePlan
from nftproxy.nft.kernel import ErrorKind, NftError
from nftproxy.nft.model import Chain, Element, Family, Set, Table
from nftproxy.nft.render import chain_targets, set_references
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    AddRule,
    AddSet,
    AddTable,
    Batch,
    Change,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    FlushChain,
    FlushSet,
    Transaction,
    WakeTable,
)


@dataclass
class _Table:
    comment: str | None = None
    dormant: bool = False
    sets: dict[str, Set] = field(default_factory=dict)
    elements: dict[str, dict[tuple[str, ...], Element]] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)

    @classmethod
    def of(cls, t: Table) -> _Table:
        out = cls(t.comment, t.dormant)
        for s in t.sets:
            out.sets[s.name] = replace(s, elements=())
            out.elements[s.name] = {e.key: e for e in s.elements}
        out.chains = {c.name: c for c in t.chains}
        return out

    def table(self, family: Family, name: str, elements: bool) -> Table:
        sets = tuple(
            replace(s, elements=tuple(self.elements[n].values()) if elements else ())
            for n, s in self.sets.items()
        )
        chains = tuple(self.chains.values())
        return Table(family, name, chains, sets, comment=self.comment, dormant=self.dormant)


def _refuse(kind: ErrorKind, what: str) -> NftError:
    return NftError(kind, what)


class MemoryKernel:
    """A Kernel (see :class:`nftproxy.nft.kernel.Kernel`) held in memory."""

    def __init__(self) -> None:
        self.held: dict[tuple[Family, str], _Table] = {}
        self.gen = 0
        self.batches = 0

    # -- writing ------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        staged = copy.deepcopy(self.held)
        if batch.load is not None:
            for family in batch.load.absent:
                staged.pop((family, batch.table), None)
            for t in batch.load.tables:
                staged[(t.family, batch.table)] = _Table.of(t)
        else:
            for tx in batch.transactions:
                self._transaction(staged, tx)
        for tx in batch.after:
            self._transaction(staged, tx)
        self.held = staged  # all or nothing
        self.gen += 1
        self.batches += 1

    def _transaction(self, staged: dict[tuple[Family, str], _Table], tx: Transaction) -> None:
        key = (tx.family, tx.table)
        for change in tx.changes:
            if isinstance(change, (AddTable, WakeTable)):
                staged.setdefault(key, _Table()).dormant = False
                continue
            if key not in staged:
                raise _refuse(ErrorKind.NOT_FOUND, f"table {key}: No such file or directory")
            if isinstance(change, DeleteTable):
                del staged[key]
                continue
            _change(staged[key], change)

    def run(self, script: str) -> None:
        raise NotImplementedError("the memory kernel takes typed batches only")

    # -- reading ------------------------------------------------------------

    def read_table(self, family: Family, name: str, *, elements: bool = True) -> Table | None:
        held = self.held.get((family, name))
        return None if held is None else held.table(family, name, elements)

    def read_set(self, family: Family, table: str, name: str) -> Set | None:
        held = self.held.get((family, table))
        if held is None or name not in held.sets:
            return None
        return replace(held.sets[name], elements=tuple(held.elements[name].values()))

    def tables(self, family: Family) -> set[str]:
        return {n for f, n in self.held if f == family}

    def list_table(self, family: Family, name: str) -> dict[str, Any] | None:
        raise NotImplementedError("no nft JSON listing in memory")

    def generation(self) -> int:
        return self.gen

    def delete_stale_flows(self, plan: StalePlan) -> int:
        return 0  # no conntrack here


def _change(t: _Table, change: Change) -> None:  # noqa: PLR0912 - one branch per change
    if isinstance(change, AddSet):
        have = t.sets.get(change.set.name)
        bare = replace(change.set, elements=())
        if have is not None and have != bare:
            raise _refuse(ErrorKind.EXISTS, f"set {bare.name}: File exists")
        t.sets.setdefault(bare.name, bare)
        t.elements.setdefault(bare.name, {})
    elif isinstance(change, (DeleteSet, FlushSet)):
        if change.name not in t.sets:
            raise _refuse(ErrorKind.NOT_FOUND, f"set {change.name}: No such file or directory")
        if isinstance(change, DeleteSet):
            users = [c.name for c in t.chains.values() if _uses(c, change.name)]
            if users:
                raise _refuse(ErrorKind.BUSY, f"set {change.name} used by {users}")
            del t.sets[change.name]
            del t.elements[change.name]
        else:
            t.elements[change.name].clear()
    elif isinstance(change, AddChain):
        t.chains.setdefault(change.chain.name, replace(change.chain, rules=()))
    elif isinstance(change, (FlushChain, DeleteChain)):
        chain = t.chains.get(change.name)
        if chain is None:
            raise _refuse(ErrorKind.NOT_FOUND, f"chain {change.name}: No such file or directory")
        if isinstance(change, FlushChain):
            t.chains[change.name] = replace(chain, rules=())
        elif chain.rules or _referenced(t, change.name):
            raise _refuse(ErrorKind.BUSY, f"chain {change.name}: Device or resource busy")
        else:
            del t.chains[change.name]
    elif isinstance(change, AddRule):
        chain = t.chains.get(change.chain)
        if chain is None:
            raise _refuse(ErrorKind.NOT_FOUND, f"chain {change.chain}: No such file or directory")
        t.chains[change.chain] = replace(chain, rules=(*chain.rules, change.rule))
    elif isinstance(change, AddElements):
        held = t.elements.get(change.set.name)
        if held is None:
            raise _refuse(ErrorKind.NOT_FOUND, f"set {change.set.name}: No such file or directory")
        for e in change.elements:
            old = held.get(e.key)
            if old is not None and old.value != e.value:
                raise _refuse(
                    ErrorKind.EXISTS, f"element {e.key} in {change.set.name}: File exists"
                )
            held[e.key] = e
    else:
        assert isinstance(change, DeleteElements)
        held = t.elements.get(change.set.name)
        for e in change.elements:
            if held is None or e.key not in held:
                raise _refuse(ErrorKind.NOT_FOUND, f"element {e.key}: No such file or directory")
            del held[e.key]


def _uses(chain: Chain, set_name: str) -> bool:
    return set_name in set(set_references(chain))


def _referenced(t: _Table, chain: str) -> bool:
    """Whether a rule jumps to the chain or a verdict map element names it."""
    if any(chain in set(chain_targets(c)) for c in t.chains.values()):
        return True
    return any(
        e.value is not None and len(e.value) == 2 and e.value[1] == chain
        for held in t.elements.values()
        for e in held.values()
    )
