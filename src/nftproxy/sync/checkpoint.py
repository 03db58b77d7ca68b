"""The elements a sync applied, kept on disk so that a later ``apply`` need not
read them back (at 10,000 Services they are nearly all of a table; reading them is
0.6 s, while the rest of the table reads in milliseconds).

The file is plain JSON, versioned: ``{"version", "generation", "elements"}``, the
elements by ``family/set`` as ``[key, value, comment]`` lists. No code is
loaded from it (it may sit on a hostPath), and what is read back is checked as
the kernel would take it before it may reach a transaction (``delete element``
names its keys): an address, protocol, port or index of the set's type, a
verdict nftproxy writes, a comment nft accepts. One element that fails makes the
whole checkpoint untrusted: the kernel is read instead. It is written atomically: a temporary
file unique to the writer, mode 0600, fsynced, then renamed over the old one. A
file that cannot be read (missing, another version, damaged) is no checkpoint.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from nftproxy.nft import values
from nftproxy.nft.model import DataType, Element, Family, Set, Table
from nftproxy.nft.render import COMMENT_MAX, COMMENT_SAFE

VERSION = 3

Elements = dict[str, list[Element]]
"""Elements by ``family/set``."""


@dataclass(frozen=True)
class Checkpoint:
    """The elements a sync applied, and the generation it stamped into the kernel."""

    generation: str
    elements: Elements

    @classmethod
    def of(cls, generation: str, tables: dict[Family, Table | None]) -> Checkpoint:
        """The checkpoint of what tables hold."""
        elements = {
            f"{family.value}/{s.name}": list(s.elements)
            for family, t in tables.items()
            if t is not None
            for s in t.sets
            if not s.dynamic
        }
        return cls(generation, elements)

    def fill(self, structure: dict[Family, Table | None]) -> dict[Family, Table | None] | None:
        """The tables read without their elements, with the elements put back; None
        when a set the kernel has is not in the checkpoint."""
        out: dict[Family, Table | None] = {}
        for family, t in structure.items():
            if t is None:
                out[family] = None
                continue
            sets = []
            for s in t.sets:
                key = f"{family.value}/{s.name}"
                if s.dynamic:
                    sets.append(s)
                elif key not in self.elements or not all(
                    valid(e, s, family) for e in self.elements[key]
                ):
                    return None
                else:
                    sets.append(replace(s, elements=tuple(self.elements[key])))
            out[family] = replace(t, sets=tuple(sets))
        return out


_CHAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
_VERDICTS = {"accept", "drop", "return"}
_TO_CHAIN = {"goto", "jump"}


def valid(e: Element, s: Set, family: Family) -> bool:
    """Whether an element read from a checkpoint fits set s as the kernel holds it."""
    key_ok = len(e.key) == len(s.key) and all(
        _component(kind, family, text, s.interval) for kind, text in zip(s.key, e.key, strict=True)
    )
    comment_ok = e.comment is None or (
        len(e.comment.encode()) <= COMMENT_MAX and bool(COMMENT_SAFE.fullmatch(e.comment))
    )
    return key_ok and comment_ok and _value_ok(e.value, s, family)


def _value_ok(value: tuple[str, ...] | None, s: Set, family: Family) -> bool:
    if not s.value or value is None:
        return not s.value and value is None
    if s.value == (DataType.VERDICT,):
        word, *chain = value
        if word in _TO_CHAIN:
            return len(chain) == 1 and bool(_CHAIN.fullmatch(chain[0]))
        return word in _VERDICTS and not chain
    return len(value) == len(s.value) and all(
        _component(kind, family, text, False) for kind, text in zip(s.value, value, strict=True)
    )


def _component(kind: DataType, family: Family, text: str, interval: bool) -> bool:
    """One key or value component: what :func:`~nftproxy.nft.values.pack` takes (a
    CIDR too in an interval set's addresses)."""
    try:
        if interval and kind == DataType.ADDR and "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return net.version == (4 if family == Family.IP else 6)
        values.pack(kind, family, text)
    except (ValueError, values.UnknownTypeError):
        return False
    return True


def _plain(e: Element) -> list[Any]:
    return [list(e.key), list(e.value) if e.value is not None else None, e.comment]


def _element(raw: list[Any]) -> Element:
    key, value, comment = raw
    return Element(tuple(map(str, key)), None if value is None else tuple(map(str, value)), comment)


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at path, or None when missing or unreadable."""
    try:
        doc = orjson.loads(path.read_bytes())
        if doc.get("version") != VERSION:
            return None
        elements = {k: [_element(e) for e in els] for k, els in doc["elements"].items()}
        return Checkpoint(str(doc["generation"]), elements)
    except (OSError, orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically (a reader sees the old one or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {
        "version": VERSION,
        "generation": checkpoint.generation,
        "elements": {k: [_plain(e) for e in els] for k, els in checkpoint.elements.items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(orjson.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
