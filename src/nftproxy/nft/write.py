"""Set elements as nf_tables netlink requests: a fresh load's elements without nft's parser.

nft parses and checks each element in user space: 4 to 9 microseconds apiece,
more for longer keys (10,000 Services x 3 endpoints are 76,500 elements: 0.45 s
of the 0.69 s nft takes to load them with their chains). Encoding them here costs
under a microsecond each. Only elements come this way, and only into sets whose
key and value types nftproxy knows and that are not intervals (their elements
are ranges the kernel stores as start and end points: nft keeps those). The
encoders mirror :mod:`nftproxy.nft.read`'s decoders; a test reads back what they
wrote.
"""

from __future__ import annotations

import functools
import operator
import socket
from collections.abc import Callable, Iterable, Iterator

from nftproxy.nft import values
from nftproxy.nft.expressions import VERDICTS
from nftproxy.nft.model import DataType, Element, Family, Set, Value, VerdictKind
from nftproxy.nft.read import (
    ELEM_DATA,
    ELEM_KEY,
    ELEM_LIST_ELEMENTS,
    ELEM_LIST_SET,
    ELEM_LIST_TABLE,
    ELEM_USERDATA,
    UDATA_COMMENT,
)
from nftproxy.nft.transaction import AddElements, Transaction
from nftproxy.nft.wire import (
    ATTR,
    FAMILIES,
    NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT,
    NLA_F_NESTED,
    attr,
    nest,
    string,
)

VERDICT_CODE, VERDICT_CHAIN = 1, 2
NFTA_LIST_ELEM = 1
MESSAGE_BYTES = 60_000
"""Elements per request are bounded by bytes: a nest's length is 16 bits."""
_CODES = {kind: code for code, kind in VERDICTS.items()}
_KNOWN = frozenset({DataType.ADDR, DataType.PROTO, DataType.SERVICE, DataType.INDEX})

Encoder = Callable[[tuple[str, ...]], bytes]


def writable(s: Set) -> bool:
    """Whether this set's elements can be written here (else nft writes them)."""
    value_known = set(s.value) <= _KNOWN or s.value == (DataType.VERDICT,)
    return not s.interval and set(s.key) <= _KNOWN and value_known


def requests(tx: Transaction) -> Iterator[tuple[int, bytes]]:
    """The (family, attributes) of NEWSETELEM requests adding a transaction's
    elements; every change in it must be an AddElements of a writable set."""
    for change in tx.changes:
        if not isinstance(change, AddElements) or not writable(change.set):
            raise ValueError(f"not an element addition nftproxy writes: {change!r}")
        head = attr(ELEM_LIST_TABLE, string(tx.table)) + attr(
            ELEM_LIST_SET, string(change.set.name)
        )
        for part in _parts(map(element_encoder(change.set, tx.family), change.elements)):
            yield FAMILIES[tx.family], head + nest(ELEM_LIST_ELEMENTS, part)


def _parts(encoded: Iterable[bytes]) -> Iterator[bytes]:
    """Encoded elements joined into lists of at most MESSAGE_BYTES."""
    part: list[bytes] = []
    size = 0
    for one in encoded:
        if size + len(one) > MESSAGE_BYTES and part:
            yield b"".join(part)
            part, size = [], 0
        part.append(one)
        size += len(one)
    if part:
        yield b"".join(part)


def element_encoder(s: Set, family: Family) -> Callable[[Element], bytes]:
    """Encodes one element of s as a list entry of a NEWSETELEM request. A set's
    keys all have one length, so their nest's headers are made once."""
    key = tuple_encoder(s.key, family)
    key_head = _heads(ELEM_KEY, _length(s.key, family))
    value = _value_encoder(s, family)
    list_head = ATTR.pack

    def encode(e: Element) -> bytes:
        try:
            body = key_head + key(e.key)
            if e.value is not None:
                body += value(e.value)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"set {s.name}: element {e.key} : {e.value}: {err}") from err
        if e.comment is not None:
            body += attr(ELEM_USERDATA, _comment(e.comment))
        return list_head(4 + len(body), NFTA_LIST_ELEM | NLA_F_NESTED) + body

    return encode


def _length(kinds: tuple[DataType, ...], family: Family) -> int:
    """The bytes a key or value of these types takes (see :func:`tuple_encoder`)."""
    if len(kinds) == 1:
        return values.size(kinds[0], family)
    return sum((values.size(k, family) + 3) & ~3 for k in kinds)


def _heads(kind: int, length: int) -> bytes:
    """The headers of a nest holding one NFTA_DATA_VALUE of length bytes; the value
    must follow, padded to 4 (:func:`tuple_encoder` pads)."""
    padded = (length + 3) & ~3
    return ATTR.pack(8 + padded, kind | NLA_F_NESTED) + ATTR.pack(4 + length, NFTA_DATA_VALUE)


def tuple_encoder(kinds: tuple[DataType, ...], family: Family) -> Encoder:
    """Encodes a key or value's components, padded to 4 bytes: one alone takes its
    size, several in a concatenation each take a multiple of 4 bytes."""
    parts = [_scalar_encoder(k, family) for k in kinds]
    count = len(parts)

    def encode(text: tuple[str, ...]) -> bytes:
        if len(text) != count:
            raise ValueError(f"{len(text)} components for a key of {count}: {text}")
        return b"".join(map(operator.call, parts, text))

    return encode


class _Packed(dict[str, bytes]):
    """values.pack of one type, padded to 4 bytes, remembered: a lookup is the
    encoder (a C call once known; keys and values hold few distinct ports,
    protocols and indexes)."""

    def __init__(self, kind: DataType, family: Family) -> None:
        super().__init__()
        self.kind, self.family = kind, family

    def __missing__(self, text: str) -> bytes:
        raw = values.pack(self.kind, self.family, text)
        self[text] = found = raw + b"\0" * (-len(raw) % 4)
        return found


def _scalar_encoder(kind: DataType, family: Family) -> Callable[[str], bytes]:
    """One component's encoder (addresses: their length is a multiple of 4 already;
    text that is none raises OSError)."""
    if kind == DataType.ADDR:
        return functools.partial(socket.inet_pton, FAMILIES[family])
    return _Packed(kind, family).__getitem__


def _value_encoder(s: Set, family: Family) -> Callable[[Value], bytes]:
    """Encodes a map element's value as its whole data nest (verdicts remembered:
    a map's elements name few chains)."""
    if s.value == (DataType.VERDICT,):
        cache: dict[Value, bytes] = {}

        def verdict(v: Value) -> bytes:
            found = cache.get(v)
            if found is None:
                found = cache[v] = nest(ELEM_DATA, _verdict(v))
            return found

        return verdict
    data = tuple_encoder(s.value, family)
    head = _heads(ELEM_DATA, _length(s.value, family))
    return lambda v: head + data(v)


def _verdict(value: Value) -> bytes:
    kind = VerdictKind(value[0])
    body = attr(VERDICT_CODE, _CODES[kind].to_bytes(4, "big", signed=True))
    if len(value) > 1:
        body += attr(VERDICT_CHAIN, string(value[1]))
    return nest(NFTA_DATA_VERDICT, body)


def _comment(text: str) -> bytes:
    """nft's user data: one comment TLV, NUL-terminated as nft writes it."""
    raw = string(text)
    return bytes([UDATA_COMMENT, len(raw)]) + raw
