"""A rule's netlink expressions back into nftproxy's terms.

nft compiles each term into a few register operations (``ip daddr 10.0.0.1``
is a payload load into a register and a compare). This module runs those
operations symbolically: loads put a field in a register, compares, lookups
and statements take it out and become terms. It knows only the shapes
:mod:`nftproxy.ruleset.build` writes; anything else becomes a :class:`Raw` term that
never equals a desired one, so a hand-written rule always shows up in a diff.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from nftproxy.nft import values
from nftproxy.nft.model import (
    DataType,
    Dnat,
    DnatMap,
    Expr,
    Family,
    Field,
    Key,
    MarkSet,
    MarkTest,
    Masquerade,
    Match,
    Numgen,
    Op,
    Raw,
    Reject,
    SetRef,
    SetUpdate,
    Term,
    Verdict,
    VerdictKind,
    VMap,
)
from nftproxy.nft.wire import (
    NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT,
    Attrs,
    attribute_list,
    attributes,
    be32,
    be32_signed,
    text,
)

# Attribute numbers per expression (linux/netfilter/nf_tables.h).
PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN = 1, 2, 3, 4
META_DREG, META_KEY, META_SREG = 1, 2, 3
CT_DREG, CT_KEY, CT_DIRECTION = 1, 2, 3
CMP_SREG, CMP_OP, CMP_DATA = 1, 2, 3
BITWISE_SREG, BITWISE_DREG, BITWISE_MASK, BITWISE_XOR, BITWISE_OP = 1, 2, 4, 5, 6
LOOKUP_SET, LOOKUP_SREG, LOOKUP_DREG, LOOKUP_FLAGS = 1, 2, 3, 5
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
VERDICT_CODE, VERDICT_CHAIN = 1, 2
NAT_TYPE, NAT_REG_ADDR_MIN, NAT_REG_PROTO_MIN = 1, 3, 5
MASQ_FLAGS = 1
REJECT_TYPE, REJECT_CODE = 1, 2
NUMGEN_DREG, NUMGEN_MODULUS, NUMGEN_TYPE, NUMGEN_OFFSET = 1, 2, 3, 4
DYNSET_SET_NAME, DYNSET_OP, DYNSET_SREG_KEY, DYNSET_SREG_DATA, DYNSET_TIMEOUT = 1, 3, 4, 5, 6
DYNSET_EXPR, DYNSET_EXPRESSIONS = 7, 9
FIB_DREG, FIB_RESULT, FIB_FLAGS = 1, 2, 3
BYTEORDER_SREG, BYTEORDER_DREG = 1, 2

NETWORK, TRANSPORT = 1, 2
META_MARK, META_IIFNAME, META_L4PROTO = 3, 6, 16
IFNAMSIZ = 16
CT_STATE, CT_STATUS = 0, 2
CMP_EQ, CMP_NEQ = 0, 1
LOOKUP_INVERT = 1
DYNSET_UPDATE = 1
NAT_DNAT = 1
RANDOM_FULLY = 0x10
REJECT_ICMP, REJECT_TCP_RESET = 0, 1
PORT_UNREACHABLE = {Family.IP: 3, Family.IP6: 4}
NUMGEN_RANDOM = 1
FIB_ADDRTYPE, FIB_SADDR = 3, 1
VERDICT_REG = 0

VERDICTS = {
    0: VerdictKind.DROP,
    1: VerdictKind.ACCEPT,
    -3: VerdictKind.JUMP,
    -4: VerdictKind.GOTO,
    -5: VerdictKind.RETURN,
}
CT_STATES = {1: "invalid", 2: "established", 4: "related", 8: "new", 64: "untracked"}
CT_STATUSES = {1: "expected", 2: "seen-reply", 4: "assured", 8: "confirmed", 16: "snat", 32: "dnat"}
ADDRESS_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast"}

# (base, offset, length) of the header fields nftproxy reads, per family.
_FIELDS = {
    Family.IP: {(NETWORK, 12, 4): Field.SADDR, (NETWORK, 16, 4): Field.DADDR},
    Family.IP6: {(NETWORK, 8, 16): Field.SADDR, (NETWORK, 24, 16): Field.DADDR},
}
_DPORT = (TRANSPORT, 2, 2)
_TYPES = {
    Field.SADDR: DataType.ADDR,
    Field.DADDR: DataType.ADDR,
    Field.L4PROTO: DataType.PROTO,
    Field.DPORT: DataType.SERVICE,
}


class UnknownExpressionError(ValueError):
    """An expression, or a use of one, that nftproxy never writes."""


@dataclass(frozen=True)
class _Load:
    """A register holding a field (``size`` bytes of it: fewer for a prefix compare)."""

    expr: Expr
    size: int
    full: int


@dataclass(frozen=True)
class _Masked:
    """A register holding ``(load & mask) ^ xor``."""

    load: _Load
    mask: int
    xor: int


@dataclass(frozen=True)
class _MapResult:
    """A register holding the value a map lookup found."""

    key: Key
    map: str


@dataclass(frozen=True)
class _Constant:
    data: bytes


_Register = _Load | _Masked | _MapResult | _Constant


def _reg32(reg: int) -> int:
    """A register number as its 32-bit slot (NFT_REG_1..4 are 16 bytes wide)."""
    return 8 + (reg - 1) * 4 if 1 <= reg <= 4 else reg


def _data(nest: bytes) -> bytes:
    return attributes(nest)[NFTA_DATA_VALUE]


def _native(data: bytes) -> int:
    return int.from_bytes(data[:4], "little")


@dataclass
class Rules:
    """Decodes the rules of one table; knows its sets' key lengths and anonymous sets."""

    family: Family
    key_lengths: dict[str, int]
    anonymous: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def terms(self, expressions: list[tuple[str, Attrs]]) -> tuple[Term, ...]:
        """One rule's expressions as terms (unknown ones as Raw, in place)."""
        state = _State(self, {})
        out: list[Term] = []
        for name, attrs in expressions:
            handler = _HANDLERS.get(name)
            try:
                if handler is None:
                    raise UnknownExpressionError(name)
                out += handler(state, attrs)
            except (UnknownExpressionError, KeyError, ValueError, struct.error):
                out.append(Raw(_describe(name, attrs)))
        return tuple(out)


@dataclass
class _State:
    rules: Rules
    regs: dict[int, _Register]

    def put(self, reg: int, value: _Register) -> list[Term]:
        self.regs[_reg32(reg)] = value
        return []

    def take(self, reg: int) -> _Register:
        return self.regs.pop(_reg32(reg))

    def key(self, reg: int, set_name: str) -> Key:
        """The fields concatenated from reg on, as long as the set's key."""
        length = self.rules.key_lengths[set_name]
        slot, used, key = _reg32(reg), 0, []
        while used < length:
            value = self.regs.pop(slot)
            if not isinstance(value, _Load) or value.size != value.full:
                raise UnknownExpressionError(value)
            key.append(value.expr)
            width = (value.size + 3) & ~3
            slot, used = slot + width // 4, used + width
        return tuple(key)


def _payload(state: _State, a: Attrs) -> list[Term]:
    base, offset, length = be32(a[PAYLOAD_BASE]), be32(a[PAYLOAD_OFFSET]), be32(a[PAYLOAD_LEN])
    if (base, offset, length) == _DPORT:
        return state.put(be32(a[PAYLOAD_DREG]), _Load(Field.DPORT, 2, 2))
    for (b, off, full), name in _FIELDS[state.rules.family].items():
        if base == b and offset == off and 0 < length <= full:  # fewer bytes: a prefix
            return state.put(be32(a[PAYLOAD_DREG]), _Load(name, length, full))
    raise UnknownExpressionError(a)


def _meta(state: _State, a: Attrs) -> list[Term]:
    key = be32(a[META_KEY])
    if META_SREG in a:
        value = state.take(be32(a[META_SREG]))
        if key == META_MARK and isinstance(value, _Masked) and value.load.expr == Field.MARK:
            if value.mask == 0xFFFFFFFF:
                return [MarkSet(value.xor, xor=True)]
            if value.mask == ~value.xor & 0xFFFFFFFF:
                return [MarkSet(value.xor)]
        raise UnknownExpressionError(a)
    fields = {
        META_MARK: (Field.MARK, 4),
        META_L4PROTO: (Field.L4PROTO, 1),
        META_IIFNAME: (Field.IIFNAME, IFNAMSIZ),
    }
    name, size = fields[key]
    return state.put(be32(a[META_DREG]), _Load(name, size, size))


def _ct(state: _State, a: Attrs) -> list[Term]:
    if CT_DIRECTION in a:
        raise UnknownExpressionError(a)
    name = {CT_STATE: Field.CT_STATE, CT_STATUS: Field.CT_STATUS}[be32(a[CT_KEY])]
    return state.put(be32(a[CT_DREG]), _Load(name, 4, 4))


def _fib(state: _State, a: Attrs) -> list[Term]:
    if be32(a[FIB_RESULT]) != FIB_ADDRTYPE or be32(a[FIB_FLAGS]) != FIB_SADDR:
        raise UnknownExpressionError(a)
    return state.put(be32(a[FIB_DREG]), _Load(Field.FIB_SADDR_TYPE, 4, 4))


def _numgen(state: _State, a: Attrs) -> list[Term]:
    if be32(a[NUMGEN_TYPE]) != NUMGEN_RANDOM:
        raise UnknownExpressionError(a)
    numgen = Numgen(be32(a[NUMGEN_MODULUS]), be32(a.get(NUMGEN_OFFSET, b"\0" * 4)))
    return state.put(be32(a[NUMGEN_DREG]), _Load(numgen, 4, 4))


def _bitwise(state: _State, a: Attrs) -> list[Term]:
    value = state.take(be32(a[BITWISE_SREG]))
    if be32(a.get(BITWISE_OP, b"\0" * 4)) != 0 or not isinstance(value, _Load):
        raise UnknownExpressionError(a)
    mask, xor = _data(a[BITWISE_MASK]), _data(a[BITWISE_XOR])
    return state.put(
        be32(a[BITWISE_DREG]),
        _Masked(value, int.from_bytes(mask, "little"), int.from_bytes(xor, "little")),
    )


def _byteorder(state: _State, a: Attrs) -> list[Term]:
    # nft turns meta l4proto to network order inside an interval concatenation; the
    # register keeps meaning the same field.
    if be32(a[BYTEORDER_SREG]) != be32(a[BYTEORDER_DREG]):
        raise UnknownExpressionError(a)
    return []


def _flags(names: dict[int, str], bits: int) -> str | tuple[str, ...]:
    found = tuple(names[b] for b in sorted(names) if bits & b)
    if not found or bits & ~sum(names):
        raise UnknownExpressionError(bits)
    return found[0] if len(found) == 1 else found


def _compare_masked(family: Family, value: _Masked, data: bytes, op: Op) -> Term:
    expr = value.load.expr
    if expr == Field.MARK and value.xor == 0 and _native(data) == 0:
        return MarkTest(value.mask, set_=op == Op.NE)
    if expr in (Field.CT_STATE, Field.CT_STATUS) and op == Op.NE and _native(data) == 0:
        names = CT_STATES if expr == Field.CT_STATE else CT_STATUSES
        return Match((expr,), _flags(names, value.mask))
    if expr in (Field.SADDR, Field.DADDR) and value.xor == 0:
        mask = value.mask.to_bytes(value.load.size, "little")
        bits = int.from_bytes(mask, "big").bit_count()
        if mask == (((1 << bits) - 1) << (len(mask) * 8 - bits)).to_bytes(len(mask), "big"):
            return Match((expr,), values.prefix(family, data, bits), op)
    raise UnknownExpressionError(value)


def _compare_load(family: Family, value: _Load, data: bytes) -> str:
    expr = value.expr
    if isinstance(expr, Numgen):
        return str(_native(data))
    if expr == Field.IIFNAME:  # a name without its NUL is a prefix ("veth*")
        name = data.split(b"\0", 1)[0].decode()
        return name if b"\0" in data else name + "*"
    if value.size != value.full:
        return values.prefix(family, data, value.size * 8)
    if expr == Field.FIB_SADDR_TYPE:
        return ADDRESS_TYPES[_native(data)]
    if expr == Field.MARK:
        return str(_native(data))
    if expr in _TYPES:
        return values.scalar(_TYPES[expr], family, data)
    raise UnknownExpressionError(value)


def _cmp(state: _State, a: Attrs) -> list[Term]:
    op = {CMP_EQ: Op.EQ, CMP_NEQ: Op.NE}[be32(a[CMP_OP])]
    value, data = state.take(be32(a[CMP_SREG])), _data(a[CMP_DATA])
    family = state.rules.family
    if isinstance(value, _Masked):
        return [_compare_masked(family, value, data, op)]
    if isinstance(value, _Load):
        return [Match((value.expr,), _compare_load(family, value, data), op)]
    raise UnknownExpressionError(value)


def _lookup(state: _State, a: Attrs) -> list[Term]:
    name = text(a[LOOKUP_SET])
    key = state.key(be32(a[LOOKUP_SREG]), name)
    if LOOKUP_DREG in a:
        dreg = be32(a[LOOKUP_DREG])
        if dreg == VERDICT_REG:
            return [VMap(key, name)]
        return state.put(dreg, _MapResult(key, name))
    op = Op.NE if be32(a.get(LOOKUP_FLAGS, b"\0" * 4)) & LOOKUP_INVERT else Op.EQ
    anonymous = state.rules.anonymous.get(name)
    return [Match(key, anonymous if anonymous is not None else SetRef(name), op)]


def verdict(nest: bytes) -> tuple[VerdictKind, str | None]:
    """A verdict data nest: its kind and, for jump and goto, its chain."""
    a = attributes(attributes(nest)[NFTA_DATA_VERDICT])
    chain = text(a[VERDICT_CHAIN]) if VERDICT_CHAIN in a else None
    return VERDICTS[be32_signed(a[VERDICT_CODE])], chain


def _immediate(state: _State, a: Attrs) -> list[Term]:
    dreg = be32(a[IMMEDIATE_DREG])
    if dreg == VERDICT_REG:
        kind, chain = verdict(a[IMMEDIATE_DATA])
        return [Verdict(kind, chain)]
    return state.put(dreg, _Constant(_data(a[IMMEDIATE_DATA])))


def _nat(state: _State, a: Attrs) -> list[Term]:
    if be32(a[NAT_TYPE]) != NAT_DNAT:
        raise UnknownExpressionError(a)
    addr = state.take(be32(a[NAT_REG_ADDR_MIN]))
    if isinstance(addr, _MapResult):
        return [DnatMap(addr.key, addr.map)]
    port = state.take(be32(a[NAT_REG_PROTO_MIN]))
    if isinstance(addr, _Constant) and isinstance(port, _Constant):
        family = state.rules.family
        text_addr = values.scalar(DataType.ADDR, family, addr.data)
        return [Dnat(text_addr, int(values.scalar(DataType.SERVICE, family, port.data)))]
    raise UnknownExpressionError(a)


def _masq(state: _State, a: Attrs) -> list[Term]:
    if be32(a.get(MASQ_FLAGS, b"\0" * 4)) != RANDOM_FULLY:
        raise UnknownExpressionError(a)
    return [Masquerade()]


def _reject(state: _State, a: Attrs) -> list[Term]:
    kind, code = be32(a[REJECT_TYPE]), a.get(REJECT_CODE, b"\0")[0]
    if kind == REJECT_TCP_RESET:
        return [Reject(tcp_reset=True)]
    if kind == REJECT_ICMP and code == PORT_UNREACHABLE[state.rules.family]:
        return [Reject()]
    raise UnknownExpressionError(a)


def _dynset(state: _State, a: Attrs) -> list[Term]:
    timeout = int.from_bytes(a.get(DYNSET_TIMEOUT, b""), "big")
    stateful = attribute_list(a.get(DYNSET_EXPRESSIONS, b"")) or DYNSET_EXPR in a
    if be32(a[DYNSET_OP]) != DYNSET_UPDATE or timeout or stateful or DYNSET_SREG_DATA in a:
        raise UnknownExpressionError(a)
    name = text(a[DYNSET_SET_NAME])
    return [SetUpdate(name, state.key(be32(a[DYNSET_SREG_KEY]), name))]


_HANDLERS: dict[str, Callable[[_State, Attrs], list[Term]]] = {
    "payload": _payload,
    "meta": _meta,
    "ct": _ct,
    "fib": _fib,
    "numgen": _numgen,
    "bitwise": _bitwise,
    "byteorder": _byteorder,
    "cmp": _cmp,
    "lookup": _lookup,
    "immediate": _immediate,
    "nat": _nat,
    "masq": _masq,
    "reject": _reject,
    "dynset": _dynset,
}


def _describe(name: str, attrs: Attrs) -> str:
    """An expression nftproxy cannot name, as its kind and raw attributes."""
    parts = " ".join(f"{k}={v.hex()}" for k, v in sorted(attrs.items()))
    return f"[{name} {parts}]".replace(" ]", "]")
