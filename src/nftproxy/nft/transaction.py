"""A transaction: an ordered list of changes to one table, applied atomically.

``plan`` (in :mod:`nftproxy.sync.plan`) makes one; :mod:`nftproxy.nft.render` prints
it as the exact text libnftables receives (and ``--dry-run`` shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nftproxy.nft.model import Chain, Element, Family, Rule, Ruleset, Set


@dataclass(frozen=True)
class AddTable:
    """Create the table (no-op if it exists)."""


@dataclass(frozen=True)
class WakeTable:
    """Clear the table's ``dormant`` flag (set by hand, it turns every rule off)."""


@dataclass(frozen=True)
class DeleteTable:
    """Remove the table and everything in it."""


@dataclass(frozen=True)
class AddSet:
    """Declare a set or map (its elements come with ``AddElements``)."""

    set: Set


@dataclass(frozen=True)
class DeleteSet:
    """Remove a set or map."""

    name: str


@dataclass(frozen=True)
class FlushSet:
    """Remove every element of a set or map."""

    name: str


@dataclass(frozen=True)
class AddChain:
    """Declare a chain (base chains with their hook); rules come with ``AddRule``."""

    chain: Chain


@dataclass(frozen=True)
class FlushChain:
    """Remove every rule of a chain."""

    name: str


@dataclass(frozen=True)
class DeleteChain:
    """Remove an (empty, unreferenced) chain."""

    name: str


@dataclass(frozen=True)
class AddRule:
    """Append a rule to a chain."""

    chain: str
    rule: Rule


@dataclass(frozen=True)
class AddElements:
    """Add elements to a set or map."""

    set: Set
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class DeleteElements:
    """Remove elements (by key) from a set or map."""

    set: Set
    elements: tuple[Element, ...]


Change = (
    AddTable
    | WakeTable
    | DeleteTable
    | AddSet
    | DeleteSet
    | FlushSet
    | AddChain
    | FlushChain
    | DeleteChain
    | AddRule
    | AddElements
    | DeleteElements
)


@dataclass(frozen=True)
class Transaction:
    """Changes to one table, in the order they must run."""

    family: Family
    table: str
    changes: tuple[Change, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class Batch:
    """What one sync hands the kernel, applied as one atomic transaction: a whole
    ruleset that replaces our tables (``load``), or ``transactions``; then ``after``
    (the generation stamps)."""

    table: str
    transactions: tuple[Transaction, ...] = ()
    load: Ruleset | None = None
    after: tuple[Transaction, ...] = ()
    fresh: bool = False
    """The kernel holds none of our tables: a load may go in stages (the tables
    dormant until the last one), see :mod:`nftproxy.nft.stages`."""
    staged: bool = False
    """A load may go in stages even though our tables are there: the first stage
    replaces them with dormant ones, so their traffic stops until the last (a
    repeated failure's whole load, where one script would need nft's ~1 GB)."""
