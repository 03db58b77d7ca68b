"""One table read back over netlink into the typed objects the builder makes.

Chains, sets, elements and rules come in four dumps; the ruleset generation is
read before and after, and a table that changed in between is read again, so
the result is one consistent state. The elements of dynamic sets (client
affinity) are the kernel's own and are not read; the elements of interval sets
are put back together from the kernel's start and end points.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import tenacity

from nftproxy.nft import values
from nftproxy.nft.errors import DumpInterruptedError, NetlinkError
from nftproxy.nft.expressions import VERDICTS, Rules, verdict
from nftproxy.nft.gcpause import paused_gc
from nftproxy.nft.model import (
    BaseHook,
    Chain,
    ChainType,
    DataType,
    Element,
    Family,
    Hook,
    Rule,
    Set,
    Table,
    Value,
)
from nftproxy.nft.wire import (
    FAMILIES,
    Attrs,
    Message,
    Socket,
    attribute_list,
    attributes,
    be32,
    be32_signed,
    data_value,
    string,
    text,
)

T = TypeVar("T")

TABLE_NAME, TABLE_FLAGS = 1, 2
TABLE_DORMANT = 0x1
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE, CHAIN_USERDATA = 1, 3, 4, 5, 7, 12
HOOK_NUM, HOOK_PRIORITY = 1, 2
SET_TABLE, SET_NAME, SET_FLAGS, SET_KEY_TYPE, SET_KEY_LEN = 1, 2, 3, 4, 5
SET_DATA_TYPE, SET_DATA_LEN, SET_DESC, SET_TIMEOUT, SET_USERDATA = 6, 7, 9, 11, 13
SET_EXPR, SET_EXPRESSIONS = 17, 18
SET_DESC_SIZE = 1
ELEM_LIST_TABLE, ELEM_LIST_SET, ELEM_LIST_ELEMENTS = 1, 2, 3
ELEM_KEY, ELEM_DATA, ELEM_FLAGS, ELEM_USERDATA, ELEM_EXPR, ELEM_KEY_END = 1, 2, 3, 6, 7, 10
ELEM_EXPRESSIONS = 11
COUNTER_PACKETS = 2
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS, RULE_USERDATA = 1, 2, 4, 7
EXPR_NAME, EXPR_DATA = 1, 2
GEN_ID = 1

SET_ANONYMOUS, SET_INTERVAL, SET_MAP, SET_TIMEOUT_FLAG, SET_EVAL = 0x1, 0x4, 0x8, 0x10, 0x20
ELEM_INTERVAL_END = 0x1
DATA_VERDICT = 0xFFFFFF00
# Type numbers inside nft's user data (libnftnl's include/udata.h).
UDATA_SET_COMMENT = 7
UDATA_COMMENT = 0  # of rules, elements and chains
HOOKS = dict(enumerate(Hook))  # NF_INET_PRE_ROUTING .. NF_INET_POST_ROUTING
GENERATION_ATTEMPTS = 5
STABLE_ATTEMPTS = 20


def comment(userdata: bytes | None, kind: int) -> str | None:
    """The comment in nft's user data TLVs, if any."""
    offset, data = 0, userdata or b""
    while offset + 2 <= len(data):
        tlv, length = data[offset], data[offset + 1]
        if tlv == kind:
            return text(data[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return None


@dataclass(frozen=True)
class _SetInfo:
    """A set's definition as the kernel holds it, with what decoding its elements needs."""

    set: Set
    flags: int
    key_len: int
    data_len: int


class TableReader:
    """Reads one table of one family through a netlink socket."""

    def __init__(self, sock: Socket, family: Family, name: str, *, elements: bool = True) -> None:
        self.sock = sock
        self.family = family
        self.name = name
        self.af = FAMILIES[family]
        self.retry_dumps = False
        self.elements = elements
        """Read the named sets' elements (else only their definitions)."""

    def read(self) -> Table | None:
        """The table, or None when it does not exist; consistent across the dumps.

        The generation is the kernel's, for every table of every owner: a read that
        overlapped anybody's commit is made again, after a short random pause. When
        other owners commit faster than a read takes, two reads in a row that agree
        are taken as one consistent state instead.
        """
        with paused_gc():
            try:
                table: Table | None = _retrying()(self._consistent)
            except DumpInterruptedError:
                table = self._stable()
        return table

    def _stable(self) -> Table | None:
        # Here each dump is retried on its own: when commits come faster than a whole
        # read takes, a read made of whole dumps would almost never get through.
        self.retry_dumps = True
        reads: list[Table | None] = []
        try:
            for _ in range(STABLE_ATTEMPTS):
                try:
                    reads.append(self._read())
                except DumpInterruptedError:
                    continue
                if len(reads) > 1 and _content(reads[-1]) == _content(reads[-2]):
                    return reads[-1]
        finally:
            self.retry_dumps = False
        raise DumpInterruptedError

    def _consistent(self) -> Table | None:
        before = self._generation()
        table = self._read()
        if self._generation() != before:
            raise DumpInterruptedError
        return table

    def read_set(self, name: str) -> Set | None:
        """One named set with its elements, or None when it or the table is absent;
        read again while its dump is interrupted (see :meth:`read`)."""
        return _retrying()(self._read_set, name)

    def _read_set(self, name: str) -> Set | None:
        request = {SET_TABLE: string(self.name)}
        for info in (self._set(a) for a in self._dump(Message.GETSET, request, SET_TABLE)):
            if info.set.name == name and not info.flags & SET_ANONYMOUS:
                return self._with_elements(info, dynamic=True)
        return None

    def counters(self, name: str) -> list[Counted]:
        """The counters of one set's elements, keys not decoded (none when the set or
        the table is absent, or the set counts nothing); read again while the dump
        is interrupted (see :meth:`read`)."""
        request = {ELEM_LIST_TABLE: string(self.name), ELEM_LIST_SET: string(name)}
        empty: list[Counted] = []
        return _retrying()(self._retried, Message.GETSETELEM, request, _counted, empty)

    def _generation(self) -> int:
        return generation(self.sock)

    def _retried(
        self,
        message: Message,
        attrs: dict[int, bytes],
        use: Callable[[Iterable[bytes]], T],
        empty: T,
    ) -> T:
        """use() of a dump's replies as they arrive, again from the start when the
        dump was interrupted; empty when what it names is gone."""
        for _ in range(STABLE_ATTEMPTS if self.retry_dumps else 1):
            try:
                return use(self.sock.bodies(message, self.af, attrs))
            except DumpInterruptedError:
                continue
            except NetlinkError as err:
                if err.errno == errno.ENOENT:
                    return empty
                raise
        raise DumpInterruptedError

    def _bodies(self, message: Message, attrs: dict[int, bytes]) -> list[bytes]:
        """A dump's replies; none when what it names is gone (the generation tells)."""
        return self._retried(message, attrs, list, [])

    def _dump(self, message: Message, attrs: dict[int, bytes], table_attr: int) -> list[Attrs]:
        out = [attributes(b) for b in self._bodies(message, attrs)]
        return [a for a in out if text(a.get(table_attr, b"")) == self.name]

    def _read(self) -> Table | None:
        tables = self._dump(Message.GETTABLE, {}, TABLE_NAME)
        if not tables:
            return None
        dormant = bool(be32(tables[0].get(TABLE_FLAGS, b"\0" * 4)) & TABLE_DORMANT)
        infos = [
            self._set(a)
            for a in self._dump(Message.GETSET, {SET_TABLE: string(self.name)}, SET_TABLE)
        ]
        named = [i for i in infos if not i.flags & SET_ANONYMOUS]
        anonymous = {
            i.set.name: tuple(e.key[0] for e in _decode(i, self.family, self._elements(i), True))
            for i in infos
            if i.flags & SET_ANONYMOUS and len(i.set.key) == 1
        }
        sets = tuple(self._with_elements(i) for i in named)
        rules = Rules(self.family, {i.set.name: i.key_len for i in infos}, anonymous)
        return Table(self.family, self.name, self._chains(rules), sets, dormant=dormant)

    def _set(self, a: Attrs) -> _SetInfo:
        flags = be32(a.get(SET_FLAGS, b"\0" * 4))
        data_type = be32(a[SET_DATA_TYPE]) if SET_DATA_TYPE in a else None
        value: tuple[DataType, ...] = ()
        if flags & SET_MAP and data_type is not None:
            value = (
                (DataType.VERDICT,) if data_type == DATA_VERDICT else values.datatypes(data_type)
            )
        timeout = int.from_bytes(a[SET_TIMEOUT], "big") // 1000 if SET_TIMEOUT in a else None
        dynamic = bool(flags & (SET_EVAL | SET_TIMEOUT_FLAG))
        definition = Set(
            name=text(a[SET_NAME]),
            key=values.datatypes(be32(a[SET_KEY_TYPE])),
            value=value,
            interval=bool(flags & SET_INTERVAL),
            timeout=timeout,
            dynamic=dynamic,
            comment=comment(a.get(SET_USERDATA), UDATA_SET_COMMENT),
            # nft sizes a set it fills at creation by its elements; only a dynamic
            # set's size is a limit nftproxy declares.
            size=_desc_size(a) if dynamic else None,
            counter="counter" in _expression_names(a, SET_EXPR, SET_EXPRESSIONS),
        )
        return _SetInfo(
            definition, flags, be32(a[SET_KEY_LEN]), be32(a.get(SET_DATA_LEN, b"\0" * 4))
        )

    def _with_elements(self, info: _SetInfo, *, dynamic: bool = False) -> Set:
        """The set with its elements; a dynamic set's (the kernel's own) only if asked."""
        s = info.set
        if (s.dynamic and not dynamic) or not self.elements:
            return s

        def decoded(bodies: Iterable[bytes]) -> tuple[Element, ...]:
            elements = tuple(_decode(info, self.family, _element_attrs(bodies)))
            if not (s.interval or s.dynamic) and _repeats(elements):
                raise DumpInterruptedError
            return elements

        # Decoded as the dump arrives: at 340,000 elements, holding the replies and
        # their attributes first took about 130 MB more at once.
        none: tuple[Element, ...] = ()
        elements = self._retried(Message.GETSETELEM, self._element_request(info), decoded, none)
        return replace(s, elements=elements)

    def _element_request(self, info: _SetInfo) -> dict[int, bytes]:
        return {ELEM_LIST_TABLE: string(self.name), ELEM_LIST_SET: string(info.set.name)}

    def _elements(self, info: _SetInfo) -> Iterator[Attrs]:
        """The attributes of each of a set's elements, as dumped."""
        return _element_attrs(self._bodies(Message.GETSETELEM, self._element_request(info)))

    def _chains(self, rules: Rules) -> tuple[Chain, ...]:
        found: dict[str, list[Rule]] = defaultdict(list)
        request = {RULE_TABLE: string(self.name)}
        for a in self._dump(Message.GETRULE, request, RULE_TABLE):
            expressions = [_expression(e) for e in attribute_list(a.get(RULE_EXPRESSIONS, b""))]
            rule = Rule(rules.terms(expressions), comment(a.get(RULE_USERDATA), UDATA_COMMENT))
            found[text(a[RULE_CHAIN])].append(rule)
        chains = self._dump(Message.GETCHAIN, {CHAIN_TABLE: string(self.name)}, CHAIN_TABLE)
        return tuple(
            Chain(
                text(a[CHAIN_NAME]),
                tuple(found[text(a[CHAIN_NAME])]),
                _base(a),
                comment(a.get(CHAIN_USERDATA), UDATA_COMMENT),
            )
            for a in chains
        )


def _retrying() -> tenacity.Retrying:
    """Reads again (up to GENERATION_ATTEMPTS, after a short random pause) while a
    dump is interrupted."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(GENERATION_ATTEMPTS),
        wait=tenacity.wait_random(0, 0.05),
        retry=tenacity.retry_if_exception_type(DumpInterruptedError),
        reraise=True,
    )


def _repeats(elements: tuple[Element, ...]) -> bool:
    """Whether a key came twice: the dump of a hash set resumes each reply by
    skipping as many elements as it sent, in the order of the kernel's hash table,
    and a table that grew is rehashed by a kernel worker after the commit. A dump
    across that rehash repeats some elements and misses as many (measured: 3,000
    elements read right after they were added, 9 reads in 30). A set nobody changes
    has each key once, so a repeat is such a dump."""
    return len({e.key for e in elements}) != len(elements)


def _content(table: Table | None) -> object:
    """What a table holds, with each set's elements unordered (a hash set's dump order
    changes when the kernel resizes it)."""
    if table is None:
        return None
    sets = tuple((replace(s, elements=()), frozenset(s.elements)) for s in table.sets)
    return replace(table, sets=()), sets


def _expression(nest: bytes) -> tuple[str, dict[int, bytes]]:
    a = attributes(nest)
    return text(a[EXPR_NAME]), attributes(a.get(EXPR_DATA, b""))


def _expressions(a: Attrs, one: int, many: int) -> list[tuple[str, dict[int, bytes]]]:
    """A set's or an element's own expressions: the kernel sends one as ``one``,
    more as a list in ``many``."""
    if one in a:
        return [_expression(a[one])]
    return [_expression(nest) for nest in attribute_list(a.get(many, b""))]


def _expression_names(a: Attrs, one: int, many: int) -> list[str]:
    return [name for name, _ in _expressions(a, one, many)]


def _base(a: Attrs) -> BaseHook | None:
    if CHAIN_HOOK not in a:
        return None
    hook = attributes(a[CHAIN_HOOK])
    return BaseHook(
        ChainType(text(a[CHAIN_TYPE])),
        HOOKS[be32(hook[HOOK_NUM])],
        be32_signed(hook[HOOK_PRIORITY]),
        VERDICTS[be32_signed(a.get(CHAIN_POLICY, b"\0\0\0\1"))],
    )


def _element_attrs(bodies: Iterable[bytes]) -> Iterator[Attrs]:
    """The attributes of each element in a set element dump's replies."""
    for body in bodies:
        nested = attributes(body).get(ELEM_LIST_ELEMENTS)
        yield from map(attributes, attribute_list(nested or b""))


def _key(a: Attrs, kind: int = ELEM_KEY) -> bytes:
    return data_value(a[kind])


def _memo(kind: DataType, family: Family) -> Callable[[bytes], str]:
    """values.scalar for one type, remembered; addresses are interned instead (most
    are distinct within a set, but a running proxy holds the same text in what it
    built, and the Python string is shared with that)."""
    if kind == DataType.ADDR:
        to_text = partial(socket.inet_ntop, FAMILIES[family])
        return lambda raw: sys.intern(to_text(raw))
    cache: dict[bytes, str] = {}

    def decode(raw: bytes) -> str:
        found = cache.get(raw)
        if found is None:
            found = cache[raw] = values.scalar(kind, family, raw)
        return found

    return decode


def _tuple_decoder(
    kinds: tuple[DataType, ...], family: Family, total: int
) -> Callable[[bytes], tuple[str, ...]]:
    """Decodes a key or value of these types into its components' text."""
    parts = [
        (_memo(k, family), o, o + n)
        for k, (o, n) in zip(kinds, values.layout(kinds, family, total), strict=True)
    ]
    if len(parts) == 1:
        single, _, end = parts[0]
        return lambda raw: (single(raw[:end]),)
    return lambda raw: tuple([decode(raw[o:end]) for decode, o, end in parts])


def _value_decoder(info: _SetInfo, family: Family) -> Callable[[bytes | None], Value | None]:
    """Decodes a map element's data nest (None for sets)."""
    if not info.set.value:
        return lambda nest: None
    if info.set.value == (DataType.VERDICT,):
        cache: dict[bytes | None, Value] = {}

        def verdict_value(nest: bytes | None) -> Value | None:
            found = cache.get(nest)
            if found is None:
                kind, chain = verdict(nest or b"")
                found = cache[nest] = (kind.value, chain) if chain else (kind.value,)
            return found

        return verdict_value
    data = _tuple_decoder(info.set.value, family, info.data_len)
    return lambda nest: data(data_value(nest or b""))


def _decode(
    info: _SetInfo, family: Family, raw: Iterable[Attrs], ordered: bool = False
) -> Iterable[Element]:
    """A set's dumped elements as Elements (in key order with ``ordered``)."""
    if DataType.OTHER in info.set.key or DataType.OTHER in info.set.value:
        return [_opaque(a) for a in raw]
    if info.set.interval:
        return _intervals(info, family, list(raw))
    if ordered:
        raw = sorted(raw, key=_key)
    key = _tuple_decoder(info.set.key, family, info.key_len)
    value = _value_decoder(info, family)
    return [
        Element(
            key(data_value(a[ELEM_KEY])),
            value(a.get(ELEM_DATA)),
            _element_comment(a),
        )
        for a in raw
    ]


def _element_comment(a: Attrs) -> str | None:
    return comment(a[ELEM_USERDATA], UDATA_COMMENT) if ELEM_USERDATA in a else None


def _opaque(a: Attrs) -> Element:
    """An element of a set whose types nftproxy does not know: its bytes, in hex."""
    data = a.get(ELEM_DATA)
    value = (data.hex(),) if data is not None else None
    return Element((data_value(a[ELEM_KEY]).hex(),), value)


def _intervals(info: _SetInfo, family: Family, raw: list[Attrs]) -> Iterable[Element]:
    """Interval elements as nft prints them: from each element's inclusive end
    (concatenations), or from the sorted start and end points (single ranges)."""
    kinds = info.set.key
    layout = list(zip(kinds, values.layout(kinds, family, info.key_len), strict=True))
    value = _value_decoder(info, family)
    for low, high, a in _ranges(info, raw):
        key = tuple(values.span(k, family, low[o : o + n], high[o : o + n]) for k, (o, n) in layout)
        yield Element(key, value(a.get(ELEM_DATA)), _element_comment(a))


def _ranges(info: _SetInfo, raw: list[Attrs]) -> Iterable[tuple[bytes, bytes, Attrs]]:
    """(first, last, element) of each interval, both inclusive."""
    if len(info.set.key) > 1:
        for a in raw:
            low = _key(a)
            yield low, _key(a, ELEM_KEY_END) if ELEM_KEY_END in a else low, a
        return

    def is_end(a: Attrs) -> bool:
        return bool(be32(a.get(ELEM_FLAGS, b"\0" * 4)) & ELEM_INTERVAL_END)

    points = sorted(raw, key=lambda a: (_key(a), not is_end(a)))
    width = info.key_len
    for i, a in enumerate(points):
        if is_end(a):
            continue
        nxt = points[i + 1] if i + 1 < len(points) else None
        last = (1 << (8 * width)) - 1
        if nxt is not None and is_end(nxt):
            last = int.from_bytes(_key(nxt), "big") - 1
        yield _key(a), last.to_bytes(width, "big"), a


@dataclass(frozen=True)
class Counted:
    """One element's counter: its key as the kernel holds it, its comment, and
    the packets that matched it since it was added."""

    key: bytes
    comment: str | None
    packets: int


def _counted(bodies: Iterable[bytes]) -> list[Counted]:
    """The counters in a set element dump's replies (elements without one left out)."""
    found = [
        Counted(data_value(a[ELEM_KEY]), _element_comment(a), packets)
        for a in _element_attrs(bodies)
        if (packets := _packets(a)) is not None
    ]
    if len({c.key for c in found}) != len(found):
        raise DumpInterruptedError  # across a rehash (see _repeats): read it again
    return found


def _packets(a: Attrs) -> int | None:
    """The packets an element's counter holds (None: it has no counter)."""
    for name, data in _expressions(a, ELEM_EXPR, ELEM_EXPRESSIONS):
        if name == "counter":
            return int.from_bytes(data[COUNTER_PACKETS], "big")
    return None


def table_names(sock: Socket, family: Family) -> set[str]:
    """The names of a family's tables."""
    return {
        text(attributes(b)[TABLE_NAME]) for b in sock.bodies(Message.GETTABLE, FAMILIES[family], {})
    }


def generation(sock: Socket) -> int:
    """The kernel's ruleset generation: every committed transaction, of any table
    and any program, moves it."""
    (body,) = sock.bodies(Message.GETGEN, 0, {}, dump=False)
    return be32(attributes(body)[GEN_ID])


def _desc_size(a: Attrs) -> int | None:
    """The size a set was declared with, if any."""
    if SET_DESC not in a:
        return None
    size = attributes(a[SET_DESC]).get(SET_DESC_SIZE)
    return be32(size) if size is not None else None
