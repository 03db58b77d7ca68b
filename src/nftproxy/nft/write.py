"""Set elements as nf_tables netlink requests: a fresh load's elements without nft's parser.

nft parses and checks each element in user space: 4 to 9 microseconds apiece,
more for longer keys (10,000 Services x 3 endpoints are 76,500 elements: 0.45 s
of the 0.69 s nft takes to load them with their chains). Encoding them here costs
0.6 to 1.3 microseconds each, and the kernel about one more. Only elements come
this way, and only into sets whose key and value types nftproxy knows and that
are not intervals (their elements are ranges the kernel stores as start and end
points: nft keeps those). The encoders mirror :mod:`nftproxy.nft.values`'
decoders; a test compares what they write with what nft writes, byte for byte.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import socket
from collections.abc import Callable, Iterator
from typing import Any

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
        encoded = list(map(element_encoder(change.set, tx.family), change.elements))
        for part in _parts(encoded):
            yield FAMILIES[tx.family], head + nest(ELEM_LIST_ELEMENTS, part)


def _parts(encoded: list[bytes]) -> Iterator[bytes]:
    """Encoded elements joined into lists of at most MESSAGE_BYTES each."""
    ends = list(itertools.accumulate(map(len, encoded)))
    start = 0
    while start < len(encoded):
        done = ends[start - 1] if start else 0
        stop = max(bisect.bisect_right(ends, done + MESSAGE_BYTES), start + 1)
        yield b"".join(encoded[start:stop])
        start = stop


def element_encoder(s: Set, family: Family) -> Callable[[Element], bytes]:
    """Encodes one element of s as a list entry of a NEWSETELEM request. A set's
    keys (and a data map's values) all have one length, so their nests' headers
    are made once; each component is one C call (see :class:`_Memo`)."""
    keys = [_scalar_encoder(k, family) for k in s.key]
    key_head = _heads(ELEM_KEY, values.length(s.key, family))
    verdicts = _Memo(_verdict_nest) if s.value == (DataType.VERDICT,) else None
    data = [] if verdicts is not None else [_scalar_encoder(k, family) for k in s.value]
    data_head = _heads(ELEM_DATA, values.length(s.value, family)) if data else b""
    comments = _Memo(_comment)
    list_head = ATTR.pack
    call = operator.call

    def encode(e: Element) -> bytes:
        key, value = e.key, e.value
        try:
            if len(key) != len(keys) or (value is not None and data and len(value) != len(data)):
                raise ValueError("wrong number of components")
            pieces = [key_head, *map(call, keys, key)]
            if value is None:
                pass
            elif verdicts is not None:
                pieces.append(verdicts[value])
            else:
                pieces += [data_head, *map(call, data, value)]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"set {s.name}: element {key} : {value}: {err}") from err
        if e.comment is not None:
            pieces.append(comments[e.comment])
        body = b"".join(pieces)
        return list_head(4 + len(body), NFTA_LIST_ELEM | NLA_F_NESTED) + body

    return encode


def _heads(kind: int, length: int) -> bytes:
    """The headers of a nest holding one NFTA_DATA_VALUE of length bytes; the value
    must follow, padded to 4."""
    padded = (length + 3) & ~3
    return ATTR.pack(8 + padded, kind | NLA_F_NESTED) + ATTR.pack(4 + length, NFTA_DATA_VALUE)


class _Memo(dict[Any, bytes]):
    """make(key), remembered: a lookup is the encoder, one C call once a key is
    known (keys and values hold few distinct ports, protocols, indexes, verdicts
    and comments)."""

    def __init__(self, make: Callable[[Any], bytes]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> bytes:
        self[key] = found = self.make(key)
        return found


def _scalar_encoder(kind: DataType, family: Family) -> Callable[[str], bytes]:
    """One component's encoder, its bytes padded to 4 (addresses: their length is
    a multiple of 4 already; text that is none raises OSError)."""
    if kind == DataType.ADDR:
        return functools.partial(socket.inet_pton, FAMILIES[family])
    return _Memo(functools.partial(_padded, kind, family)).__getitem__


def _padded(kind: DataType, family: Family, text: str) -> bytes:
    raw = values.pack(kind, family, text)
    return raw + b"\0" * (-len(raw) % 4)


def _verdict_nest(value: Value) -> bytes:
    return nest(ELEM_DATA, _verdict(value))


def _verdict(value: Value) -> bytes:
    kind = VerdictKind(value[0])
    body = attr(VERDICT_CODE, _CODES[kind].to_bytes(4, "big", signed=True))
    if len(value) > 1:
        body += attr(VERDICT_CHAIN, string(value[1]))
    return nest(NFTA_DATA_VERDICT, body)


def _comment(text: str) -> bytes:
    """nft's user data attribute: one comment TLV, NUL-terminated as nft writes it."""
    raw = string(text)
    return attr(ELEM_USERDATA, bytes([UDATA_COMMENT, len(raw)]) + raw)
