"""Our tables as a sync applied them, kept on disk so that the next process (a
restarted ``run``, the next ``apply``) need not read them back: at 10,000
Services reading is ~0.9 s, at 5,000 x 50 endpoints ~7.5 s, and loading this is
a third of that or less.

The file is plain JSON, versioned, of two kinds: ``apply``'s ``{"version",
"tables"}``, each table its chains, rules and sets as typed lists (:func:`encode`),
and what ``run`` keeps as it stops, ``{"version", "key", "present",
"fingerprints", "families"}``: each family's fixed table and each owner's part
(:class:`Kept`, :func:`encode_kept`). The elements of dynamic sets (the packet
path adds them) are not kept. No code is loaded from it, and only the model's own
classes and enums are made from it.

It is trusted only when the kernel vouches for it: a sync that writes the file
writes its SHA-256 digest (the *stamp*) into each of our tables' ``applied`` set in
the same transaction (``run``, as it stops, in a transaction of its own), and
:func:`load` makes nothing of a file whose digest is not the stamp the kernel's
tables hold. A file that was changed, damaged, or left
by an older sync is no checkpoint, and whoever changes our tables without writing
a new file (every other sync writes a random stamp) leaves them unvouched for.
What reaches nft from a trusted file is therefore what nftproxy wrote itself.

It is written atomically: a temporary file unique to the writer, mode 0600,
fsynced, then renamed over the old one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from nftproxy.nft import model
from nftproxy.nft.model import Chain, DataType, Element, Family, Set, Table
from nftproxy.ruleset.applied import EntryKey, OwnerKey
from nftproxy.ruleset.build import Fragment, assemble

VERSION = 4
DIR = Path("/var/lib/nftproxy")
"""Where ``apply`` and ``run`` keep their checkpoint unless told otherwise."""
STAMP = "sha256:"
"""How a content stamp starts (a sync that keeps no file stamps ``gen:...``)."""

Tables = dict[Family, Table | None]

_CLASSES: dict[str, type[Any]] = {
    name: c for name, c in vars(model).items() if isinstance(c, type) and is_dataclass(c)
}
"""The model's classes by name: the only ones a checkpoint makes."""
_ENUMS: dict[str, type[Enum]] = {
    name: c for name, c in vars(model).items() if isinstance(c, type) and issubclass(c, Enum)
}
_FIELDS = {c: tuple(f.name for f in fields(c)) for c in _CLASSES.values()}
_SET_FIELDS = tuple(f.name for f in fields(Set))
_ELEMENTS = _SET_FIELDS.index("elements")


@dataclass(frozen=True)
class Encoded:
    """A checkpoint's bytes and the stamp that vouches for them."""

    data: bytes
    stamp: str

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Encoded:
        """A document's bytes, stamped."""
        data = orjson.dumps(doc)
        return cls(data, stamp_of(data))


@dataclass(frozen=True)
class KeptOwner:
    """One owner's part of a table, as ``run`` applied it."""

    fragment: Fragment
    entries: tuple[EntryKey, ...]


@dataclass(frozen=True)
class KeptFamily:
    """One family's table as ``run`` holds it: the fixed part, and a part per owner."""

    fixed: Table
    owners: dict[OwnerKey, KeptOwner]


@dataclass(frozen=True)
class Kept:
    """What ``run`` keeps as it stops: its tables per owner (so that the next process
    need not build the owners whose objects did not change), the fingerprint of the
    objects each Service and Pod was built from (see
    :meth:`~nftproxy.k8s.cache.Cache.fingerprints`), and ``key``, which names the
    node settings and the build of nftproxy they were built with."""

    key: str
    families: dict[Family, KeptFamily]
    present: frozenset[Family]
    """The families that have a table."""
    fingerprints: dict[OwnerKey, str]

    def tables(self) -> Tables:
        """The tables, whole."""
        return {
            f: assemble(k.fixed, (o.fragment for o in k.owners.values()))
            if f in self.present
            else None
            for f, k in self.families.items()
        }


def key_of(node: str) -> str:
    """The key of what ``run`` keeps, for node settings (as text): they and the
    code that builds from them (a checkpoint of another build of nftproxy, an
    upgrade's, is not taken as built by this one)."""
    return hashlib.sha256(f"{node}\n{_build()}".encode()).hexdigest()


@functools.cache
def _build() -> str:
    """The digest of nftproxy as installed (see :func:`build_of`)."""
    return build_of(Path(__file__).resolve().parents[1], _compiled_libraries())


def build_of(package: Path, libraries: Iterable[Path] = ()) -> str:
    """The digest of a package's modules: each source's bytes, and each compiled
    library's (its modules', and the libraries given: mypyc's shared ones, which
    hold the code) name, size and time, so that a build that strips the sources of
    its compiled modules, or compiles them otherwise, is not taken for this one."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    for path in sorted({*package.rglob("*.so"), *libraries}):
        st = path.stat()
        digest.update(f"{path.name} {st.st_size} {st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _compiled_libraries() -> list[Path]:
    """The shared libraries of mypyc-compiled modules loaded (``<hash>__mypyc``)."""
    loaded = list(sys.modules.items())
    return [
        Path(file)
        for name, module in loaded
        if name.endswith("__mypyc") and (file := getattr(module, "__file__", None))
    ]


def encode_kept(kept: Kept) -> Encoded:
    """The checkpoint of what ``run`` kept. A chain or set that several owners use
    is written once."""
    families = {}
    for family, k in kept.families.items():
        chains: dict[str, Chain] = {}
        sets: dict[str, Set] = {}
        owners = []
        for owner, o in k.owners.items():
            chains.update(o.fragment.chains)
            sets.update(o.fragment.sets)
            elements = {name: _rows(els) for name, els in o.fragment.elements.items()}
            owners.append(
                [owner, o.entries, elements, list(o.fragment.chains), list(o.fragment.sets)]
            )
        families[family.value] = {
            "fixed": _plain(k.fixed),
            "chains": {name: _plain(c) for name, c in chains.items()},
            "sets": {name: _plain(st) for name, st in sets.items()},
            "owners": owners,
        }
    doc = {
        "version": VERSION,
        "key": kept.key,
        "present": sorted(f.value for f in kept.present),
        "fingerprints": [[*owner, fp] for owner, fp in kept.fingerprints.items()],
        "families": families,
    }
    return Encoded.of(doc)


def _kept(doc: dict[str, Any]) -> Kept:
    families = {}
    for family, body in doc["families"].items():
        fixed = _made(body["fixed"])
        chains = {name: _made(c) for name, c in body["chains"].items()}
        sets = {name: _made(st) for name, st in body["sets"].items()}
        shapes = {st.name: _shape(st) for st in (*fixed.sets, *sets.values())}
        owners = {}
        rows = body.pop("owners")
        for i, row in enumerate(rows):
            rows[i] = None  # each owner's text goes once it is read
            (kind, ns, name), entries, elements, chain_names, set_names = row
            fragment = Fragment(
                {s: _elements(text, *shapes[s]) for s, text in elements.items()},
                {c: chains[c] for c in chain_names},
                {st: sets[st] for st in set_names},
            )
            owners[(kind, ns, name)] = KeptOwner(fragment, tuple(map(tuple, entries)))
        families[Family(family)] = KeptFamily(fixed, owners)
    return Kept(
        str(doc["key"]),
        families,
        frozenset(Family(f) for f in doc["present"]),
        {(kind, ns, name): str(fp) for kind, ns, name, fp in doc["fingerprints"]},
    )


def encode(tables: Tables) -> Encoded:
    """The checkpoint of what tables hold."""
    doc = {
        "version": VERSION,
        "tables": {f.value: None if t is None else _plain(t) for f, t in tables.items()},
    }
    return Encoded.of(doc)


def default_path(netns: str | None) -> Path:
    """The checkpoint of the current network namespace, or of a named one."""
    return DIR / (f"checkpoint-{netns}" if netns else "checkpoint")


def remove(path: Path) -> None:
    """The checkpoint at path, and what is kept beside it, gone."""
    for p in (path, _generation_file(path)):
        p.unlink(missing_ok=True)


def stamp_of(data: bytes) -> str:
    """The stamp of a checkpoint's bytes."""
    return STAMP + hashlib.sha256(data).hexdigest()


def load(path: Path, stamp: str) -> Tables | Kept | None:
    """What the checkpoint at path holds (tables, or what ``run`` kept), when its
    stamp is ``stamp`` (the kernel's); None when missing, unreadable, of another
    version, or not vouched for."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not stamp.startswith(STAMP) or stamp_of(data) != stamp:
        return None
    try:
        doc = orjson.loads(data)
        del data  # 37 MB at 5,000 x 50 endpoints, needed no more
        if doc.get("version") != VERSION:
            return None
        if "families" in doc:
            return _kept(doc)
        return {Family(f): None if t is None else _made(t) for f, t in doc["tables"].items()}
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None  # ours (the stamp says so), but of a build that wrote it otherwise


def save(path: Path, encoded: Encoded) -> None:
    """Write the checkpoint atomically (a reader sees the old one or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(encoded.data)
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


def _generation_file(path: Path) -> Path:
    return path.with_name(path.name + ".generation")


def save_generation(path: Path, generation: int) -> None:
    """Keep beside the checkpoint at path the kernel's ruleset generation
    (NFT_MSG_GETGEN) right after it was stamped: a process that finds the kernel
    still there knows that nothing at all was committed since, so not even a hand
    edit of an element can differ from the checkpoint."""
    _generation_file(path).write_text(f"{generation}\n")


def generation_of(path: Path) -> int | None:
    """The generation kept beside the checkpoint at path (None: none kept, or
    unreadable)."""
    try:
        return int(_generation_file(path).read_text())
    except (OSError, ValueError):
        return None


# -- the codec -----------------------------------------------------------------
# An object is {"ClassName": [its fields in order]}, an enum {"@Enum": value}, a
# tuple a list; a set's elements are [key, value, comment] lists.


def _plain(x: Any) -> Any:
    if isinstance(x, tuple) and not isinstance(x, Element):
        return [_plain(i) for i in x]
    if isinstance(x, Set):
        out = [_plain(getattr(x, name)) for name in _SET_FIELDS]
        out[_ELEMENTS] = "" if x.dynamic else _rows(x.elements)
        return {"Set": out}
    if isinstance(x, Enum):
        return {"@" + type(x).__name__: x.value}
    names = _FIELDS.get(type(x))
    if names is None:
        return x
    return {type(x).__name__: [_plain(getattr(x, name)) for name in names]}


def _made(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_made(i) for i in x)
    if not isinstance(x, dict):
        return x
    ((name, body),) = x.items()
    if name.startswith("@"):
        return _ENUMS[name[1:]](body)
    if name == "Set":
        values: list[Any] = [_made(v) for v in body[:_ELEMENTS]]
        values.append(_elements(body[_ELEMENTS], *_shape(Set(*values))))
        values += [_made(v) for v in body[_ELEMENTS + 1 :]]
        return Set(*values)
    return _CLASSES[name](*(_made(v) for v in body))


# A set's elements are one string: a row per element, each its key's and value's
# parts and its comment. No part holds these characters (addresses, numbers, words
# and chain names, and comments of printable ASCII: render's COMMENT_SAFE); a row
# of another shape makes the whole checkpoint unreadable. One string, not a JSON
# list per element: a third of the memory and of the time at 250,000 endpoints. The
# parts read are interned: most repeat (a Service's address and port in each of its
# endpoints' elements), and at 5,000 x 50 that makes the elements 1/3 of the size.
_FIELD = "\x1f"
_ROW = "\x1e"
_NO_COMMENT = "\x00"


def _rows(elements: Iterable[Element]) -> str:
    return _ROW.join(
        _FIELD.join((*e.key, *(e.value or ()), _NO_COMMENT if e.comment is None else e.comment))
        for e in elements
    )


VERDICT = -1
"""The value shape of a verdict map: one part or two (``goto`` and a chain)."""


def _shape(st: Set) -> tuple[int, int]:
    """How many parts a set's elements have: key, and value (0: a set)."""
    if st.value == (DataType.VERDICT,):
        return len(st.key), VERDICT
    return len(st.key), len(st.value)


def _elements(text: str, keys: int, values: int) -> tuple[Element, ...]:
    """A set's elements from their rows, of the set's shape (:func:`_shape`)."""
    if not text:
        return ()
    out = []
    for row in text.split(_ROW):
        parts = row.split(_FIELD)
        given = len(parts) - keys - 1
        if given != values and not (values == VERDICT and given in (1, 2)):
            raise ValueError("an element of another shape than its set")
        parts = list(map(sys.intern, parts))  # the same protocol, port, address, label
        comment = parts[-1]
        out.append(
            Element(
                tuple(parts[:keys]),
                tuple(parts[keys:-1]) if values else None,
                None if comment == _NO_COMMENT else comment,
            )
        )
    return tuple(out)
