"""Typed, frozen nftables objects: tables, chains, rules, sets, maps, elements.

Rules are not opaque strings: a rule is a sequence of terms (matches and
statements) drawn from a small vocabulary, so the diff, the parser of live state
and any tracer can read them without regular expressions. Only
:mod:`nftproxy.nft.render` turns these objects into nft syntax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import NamedTuple


class Family(StrEnum):
    """An nftables address family; nftproxy keeps one table per IP family."""

    IP = "ip"
    IP6 = "ip6"


class Field(Enum):
    """A packet or connection property a rule can read."""

    SADDR = "saddr"
    DADDR = "daddr"
    L4PROTO = "l4proto"
    DPORT = "dport"
    MARK = "mark"
    CT_STATE = "ct_state"
    CT_STATUS = "ct_status"
    FIB_SADDR_TYPE = "fib_saddr_type"
    IIFNAME = "iifname"
    """The input interface's name; a value ending in ``*`` matches a prefix."""


@dataclass(frozen=True)
class Numgen:
    """``numgen random mod N [offset K]``: a fresh random number in [K, K + N).

    With N = 1 it is the constant K: nft 1.0.6 cannot type a literal inside a
    concatenated lookup key, so ``ip saddr . numgen random mod 1 offset K`` is how
    a rule looks up a client together with a number of its own (ClientIP affinity).
    """

    modulus: int
    offset: int = 0


Expr = Field | Numgen
"""One key component: a field or a random number."""

Key = tuple[Expr, ...]
"""A lookup key: one expression, or several concatenated with ``.``."""


class DataType(Enum):
    """The type of one component of a set or map key (or of a map's value)."""

    ADDR = "addr"
    PROTO = "proto"
    SERVICE = "service"
    INDEX = "index"
    VERDICT = "verdict"
    OTHER = "other"  # a type nftproxy never declares, found in the kernel


class Op(StrEnum):
    """Comparison operator of a match."""

    EQ = "=="
    NE = "!="


@dataclass(frozen=True)
class SetRef:
    """A reference to a named set or map: ``@name``."""

    name: str


@dataclass(frozen=True)
class Match:
    """``<key> [!=] <value>``: the rule continues only if it holds.

    ``value`` is a literal (an address, a CIDR, a protocol, a flag word or a
    number), a tuple of literals (an anonymous set) or a named set.
    """

    key: Key
    value: str | tuple[str, ...] | SetRef
    op: Op = Op.EQ


@dataclass(frozen=True)
class MarkTest:
    """``meta mark & bits == 0`` (``set_=False``) or ``!= 0`` (``set_=True``)."""

    bits: int
    set_: bool


class VerdictKind(StrEnum):
    """What a verdict statement does."""

    ACCEPT = "accept"
    DROP = "drop"
    RETURN = "return"
    JUMP = "jump"
    GOTO = "goto"


@dataclass(frozen=True)
class Verdict:
    """A verdict; ``chain`` is set for jump and goto."""

    kind: VerdictKind
    chain: str | None = None


@dataclass(frozen=True)
class Reject:
    """``reject``: ICMP(v6) port unreachable, or a TCP reset with ``tcp_reset``."""

    tcp_reset: bool = False


@dataclass(frozen=True)
class VMap:
    """``<key> vmap @map``: jump to the verdict the map holds for key."""

    key: Key
    map: str


@dataclass(frozen=True)
class DnatMap:
    """``dnat to <key> map @map``: rewrite to the address and port the map holds."""

    key: Key
    map: str


@dataclass(frozen=True)
class Dnat:
    """``dnat to ADDR:PORT`` for one fixed endpoint."""

    addr: str
    port: int


@dataclass(frozen=True)
class MarkSet:
    """``meta mark set meta mark (or|xor) bits``."""

    bits: int
    xor: bool = False


@dataclass(frozen=True)
class Masquerade:
    """``masquerade fully-random``."""


@dataclass(frozen=True)
class SetUpdate:
    """``update @set { key }``: add key or refresh its timeout."""

    set: str
    key: Key


@dataclass(frozen=True)
class TraceOn:
    """``meta nftrace set 1``: the kernel reports this packet's path (``nftproxy trace``)."""


@dataclass(frozen=True)
class Raw:
    """A term read from the kernel that nftproxy does not write, kept as text (the
    netlink expression's kind and attributes, or nft's JSON).

    Only ever found in live state; it never equals a desired term, so a rule
    holding one shows up as changed.
    """

    text: str


Term = (
    Match
    | MarkTest
    | Verdict
    | Reject
    | VMap
    | DnatMap
    | Dnat
    | MarkSet
    | Masquerade
    | SetUpdate
    | TraceOn
    | Raw
)


@dataclass(frozen=True)
class Rule:
    """One rule: its terms in order, and an optional comment."""

    terms: tuple[Term, ...]
    comment: str | None = None


class Hook(StrEnum):
    """Netfilter hook a base chain attaches to."""

    PREROUTING = "prerouting"
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"
    POSTROUTING = "postrouting"


class ChainType(StrEnum):
    """Type of a base chain."""

    FILTER = "filter"
    NAT = "nat"


@dataclass(frozen=True)
class BaseHook:
    """Where a base chain is attached, and what it does with packets no rule decides."""

    type: ChainType
    hook: Hook
    priority: int
    policy: VerdictKind = VerdictKind.ACCEPT


@dataclass(frozen=True)
class Chain:
    """A chain: a base chain when ``base`` is set, else a regular one."""

    name: str
    rules: tuple[Rule, ...] = ()
    base: BaseHook | None = None
    comment: str | None = None


Value = tuple[str, ...]
"""A map element's value: address and port, or one verdict word list."""


class Element(NamedTuple):
    """One set element (``value`` None) or map element.

    A NamedTuple rather than a dataclass: a large cluster has hundreds of
    thousands of elements, and tuples are several times cheaper to make.
    """

    key: tuple[str, ...]
    value: Value | None = None
    comment: str | None = None


@dataclass(frozen=True)
class Set:
    """A named set or map (a map when ``value`` is set)."""

    name: str
    key: tuple[DataType, ...]
    value: tuple[DataType, ...] = ()
    interval: bool = False
    timeout: int | None = None
    dynamic: bool = False
    elements: tuple[Element, ...] = ()
    comment: str | None = None
    size: int | None = None
    """The most elements a dynamic set may hold (nft's default: 65,535)."""
    counter: bool = False
    """Each element counts the packets that match it (nft's ``counter`` in the
    declaration; the kernel gives every element added its own counter)."""

    @property
    def is_map(self) -> bool:
        """Whether this is a map (has values) rather than a set."""
        return bool(self.value)


@dataclass(frozen=True)
class Table:
    """One table: everything nftproxy owns in one family."""

    family: Family
    name: str
    chains: tuple[Chain, ...] = ()
    sets: tuple[Set, ...] = ()
    comment: str | None = None
    dormant: bool = False


@dataclass(frozen=True)
class Ruleset:
    """The complete desired state: one table per family that has one.

    ``absent`` lists the families whose table must not exist.
    """

    tables: tuple[Table, ...]
    absent: tuple[Family, ...] = field(default=())
