"""The elements a sync applied, kept on disk so that a later ``apply`` need not
read them back (at 10,000 Services they are nearly all of a table; reading them is
0.6 s, while the rest of the table reads in milliseconds).

The file is plain JSON, versioned: ``{"version", "generation", "elements"}``, the
elements by ``family/set`` as ``[key, value, comment]`` lists. No code is
loaded from it (it may sit on a hostPath). It is written atomically: a temporary
file unique to the writer, mode 0600, fsynced, then renamed over the old one. A
file that cannot be read (missing, another version, damaged) is no checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from nftproxy.nft.model import Element, Family, Table

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
                elif key not in self.elements:
                    return None
                else:
                    sets.append(replace(s, elements=tuple(self.elements[key])))
            out[family] = replace(t, sets=tuple(sets))
        return out


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
