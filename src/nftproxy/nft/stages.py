"""A whole ruleset loaded into a kernel that holds none of our tables, in stages.

A fresh load (``Batch.fresh``) does not go as one transaction: first the tables,
dormant (no hook sees them), with their chains and empty sets; then the elements,
at most ``per_stage`` a transaction; then one transaction wakes the tables, so
traffic still sees one switch. nft's memory is bounded that way (5,000 Services x
50 endpoints in one script: 960 MB, in stages of 25,000 elements: 150 MB), and
the elements of sets :func:`nftproxy.nft.write.writable` accepts skip nft's
parser: they go over netlink. A ``Batch.staged`` load of more elements than one
stage goes the same way, its first stage replacing our tables with dormant ones.
Any other batch is one script.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from nftproxy.nft.model import Ruleset, Set, Table
from nftproxy.nft.render import render_batch, render_script, render_transaction
from nftproxy.nft.transaction import AddElements, Batch, Transaction, WakeTable
from nftproxy.nft.write import requests, writable

STAGE_ELEMENTS = 25_000
"""Elements per stage: nft needs about 60 MB for a stage of this many."""


@dataclass
class ElementStage:
    """Elements written over netlink as one transaction (:mod:`nftproxy.nft.write`)."""

    transactions: tuple[Transaction, ...]
    encoded: list[tuple[int, bytes]] | None = field(default=None, repr=False, compare=False)

    def requests(self) -> list[tuple[int, bytes]]:
        """The netlink requests, encoded once (text the kernel cannot hold raises
        ValueError). Not a ``functools.cached_property``: mypyc compiles that as a
        plain property, which encoded every stage twice."""
        if self.encoded is None:
            self.encoded = [r for tx in self.transactions for r in requests(tx)]
        return self.encoded


Stage = str | ElementStage
"""A script for nft, or elements for netlink: each one transaction."""


def load_stages(batch: Batch, per_stage: int = STAGE_ELEMENTS) -> list[Stage]:
    """A batch as the stages to run one after another (see the module's text)."""
    load = batch.load
    if load is None or not (batch.fresh or (batch.staged and _big(load, per_stage))):
        return [render_batch(batch)]
    tables = load.tables
    empty = tuple(
        dataclasses.replace(t, dormant=True, sets=tuple(_without_elements(st) for st in t.sets))
        for t in tables
    )
    structure = render_script(dataclasses.replace(load, tables=empty), batch.table)
    wake = [Transaction(t.family, batch.table, (WakeTable(),)) for t in tables]
    woken = "".join(map(render_transaction, [*wake, *batch.after]))
    by_nft = _element_stages(tables, batch.table, per_stage, lambda st: not writable(st))
    by_netlink = _element_stages(tables, batch.table, per_stage, writable)
    return [
        structure,
        *("".join(map(render_transaction, stage)) for stage in by_nft),
        *(ElementStage(tuple(stage)) for stage in by_netlink),
        woken,
    ]


def _big(ruleset: Ruleset, per_stage: int) -> bool:
    """More elements than one stage holds."""
    return sum(len(s.elements) for t in ruleset.tables for s in t.sets) > per_stage


def _without_elements(s: Set) -> Set:
    return dataclasses.replace(s, elements=())


def _element_stages(
    tables: Iterable[Table], table_name: str, per_stage: int, chosen: Callable[[Set], bool]
) -> Iterator[list[Transaction]]:
    """The elements of the chosen sets as transactions, at most per_stage a stage."""
    stage: list[Transaction] = []
    room = per_stage
    for t in tables:
        for st in filter(chosen, t.sets):
            start = 0
            while start < len(st.elements):
                part = st.elements[start : start + room]
                stage.append(Transaction(t.family, table_name, (AddElements(st, part),)))
                start += len(part)
                room -= len(part)
                if room == 0:
                    yield stage
                    stage, room = [], per_stage
    if stage:
        yield stage
