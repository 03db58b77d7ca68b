"""What a sync applied, kept on disk so that a restarted proxy need not read it back.

The tables' structure (chains, rules, set definitions) is pickled; their
elements, nearly all of the data, are written with ``marshal`` as plain tuples:
pickle spends 0.25 s at 10,000 Services memoising every string, marshal 0.05 s.
A file that cannot be read (missing, older format, damaged) is no checkpoint.
"""

from __future__ import annotations

import marshal
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

from nftproxy.nft.model import Element, Family, Table

VERSION = 2

Plain = tuple[tuple[str, ...], tuple[str, ...] | None, str | None]
Elements = dict[tuple[str, str], list[Plain]]


@dataclass(frozen=True)
class Checkpoint:
    """What a sync applied, and the generation it stamped into the kernel."""

    generation: str
    tables: dict[Family, Table | None]


def _split(tables: dict[Family, Table | None]) -> tuple[dict[Family, Table | None], Elements]:
    """The tables without elements, and the elements by (family, set) as plain tuples."""
    bare: dict[Family, Table | None] = {}
    elements: Elements = {}
    for family, t in tables.items():
        if t is None:
            bare[family] = None
            continue
        for s in t.sets:
            elements[(family.value, s.name)] = [(e.key, e.value, e.comment) for e in s.elements]
        bare[family] = replace(t, sets=tuple(replace(s, elements=()) for s in t.sets))
    return bare, elements


def _join(bare: dict[Family, Table | None], elements: Elements) -> dict[Family, Table | None]:
    out: dict[Family, Table | None] = {}
    for family, t in bare.items():
        if t is None:
            out[family] = None
            continue
        sets = tuple(
            replace(s, elements=tuple(Element(*e) for e in elements[(family.value, s.name)]))
            for s in t.sets
        )
        out[family] = replace(t, sets=sets)
    return out


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at path, or None when missing or unreadable."""
    try:
        with path.open("rb") as f:
            version, generation, bare = pickle.load(f)
            if version != VERSION:
                return None
            elements = marshal.loads(f.read())  # load(f) reads the file in tiny pieces
        return Checkpoint(generation, _join(bare, elements))
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError):
        return None
    except AttributeError:  # a pickle of classes that have changed since
        return None


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically (a reader sees the old one or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bare, elements = _split(checkpoint.tables)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump((VERSION, checkpoint.generation, bare), f, protocol=pickle.HIGHEST_PROTOCOL)
        f.write(marshal.dumps(elements))
    os.replace(tmp, path)
