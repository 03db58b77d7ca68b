"""A list response's items, parsed one at a time as its bytes arrive.

The first list comes from the API server's watch cache whole, whatever the page
size: at 5,000 Services x 50 endpoints, 60 MB of JSON. Read whole and parsed as
one tree it is the bytes plus some 100 MB of Python objects, held until the last
item is stored. Here each item is parsed from its own span of the bytes as they
arrive, and can be stored and let go before the next is read; only a window of
the bytes is held.

The spans are found without a JSON scanner. The API server writes a list as
``{..."metadata":{...},"items":[{item},{item}]}``, compact, every item's keys in
one order; so an item ends at a ``}`` that is followed by ``,`` and the first key
of the first item (``},{"metadata":``). That text can also occur inside an item, in
a nested array of objects (not in a string, where quotes are escaped); each span
is therefore parsed as JSON, and one that does not parse is extended to the next
candidate. A span that parses is one whole value starting where an item starts,
so it ends where that item ends: no item is ever cut wrongly.

What does not fit is parsed the plain way: a body whose head (what comes before
``"items":[``) does not parse or lacks ``metadata`` is read and parsed whole, and
the items after the last separator (the last item, or all of them when their
first keys differ) are parsed as ``{"items":[`` and the rest of the body.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

ITEMS = b'"items":['
KEEP = 1 << 22
"""Bytes of parsed items the window may hold before they are dropped from it."""


class _Body:
    """A body as it arrives: a window of its bytes, and whether more will come."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.buf = bytearray()
        self.ended = False

    def more(self) -> bool:
        """Read the next chunk; False at the end of the body."""
        for chunk in self.chunks:
            self.buf += chunk
            return True
        self.ended = True
        return False

    def rest(self) -> bytearray:
        while self.more():
            pass
        return self.buf


def parse_list(chunks: Iterable[bytes]) -> tuple[Any, Iterator[Any]]:
    """A list body's head (the body without its items) and its items, in order, as
    chunks of the body arrive. The items must be taken before anything else is read
    from where the chunks come from. Raises orjson.JSONDecodeError if the body is
    not JSON (the head at once; an item when it is reached)."""
    body = _Body(chunks)
    while (at := body.buf.find(ITEMS)) < 0 and body.more():
        pass
    head = _head(body.buf, at)
    if head is None:
        return _whole(body.rest(), 0)
    return head, _items(body, at + len(ITEMS))


def _head(buf: bytearray, at: int) -> dict[str, Any] | None:
    """What comes before the items, as an object, if it parses and has metadata."""
    if at < 0:
        return None
    try:
        head = orjson.loads(buf[:at] + b'"items":[]}')
    except orjson.JSONDecodeError:
        return None
    return head if isinstance(head, dict) and "metadata" in head else None


def _whole(data: bytes | bytearray, skip: int) -> tuple[Any, Iterator[Any]]:
    """The body parsed as one; its items (but the first skip) apart from the rest."""
    whole = orjson.loads(data)
    items = whole.get("items") if isinstance(whole, dict) else None
    if not isinstance(items, list):
        return whole, iter(())
    del whole["items"]
    return whole, iter(items[skip:])


def _items(body: _Body, pos: int) -> Iterator[Any]:
    """Each item, from pos (where the first starts) on."""
    buf = body.buf
    while not body.ended and len(buf) < pos + 2:
        body.more()
    if buf[pos : pos + 2] == b'{"':
        while (quote := buf.find(b'"', pos + 2)) < 0 and body.more():
            pass
        if quote >= 0:
            separator = b"}," + bytes(buf[pos : quote + 2])  # },{"metadata":
            while (found := _next(body, pos, separator)) is not None:
                item, pos = found
                yield item
                if pos > KEEP:
                    del buf[:pos]
                    pos = 0
    yield from _whole(b'{"items":[' + body.rest()[pos:], 0)[1]


def _next(body: _Body, pos: int, separator: bytes) -> tuple[Any, int] | None:
    """The item starting at pos and where the next starts; None when no separator
    closes a span that parses (the rest is then parsed the plain way)."""
    buf = body.buf
    search = pos
    while True:
        cut = buf.find(separator, search)
        if cut < 0:
            search = max(search, len(buf) - len(separator) + 1)
            if not body.more():
                return None
            continue
        view = memoryview(buf)
        try:
            item = orjson.loads(view[pos : cut + 1])
        except orjson.JSONDecodeError:
            search = cut + 1
            continue
        finally:
            view.release()
        return item, cut + 2
