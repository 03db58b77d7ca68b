"""Our tables as a sync applied them, kept on disk so that the next process (a
restarted ``run``, the next ``apply``) need not read them back: at 10,000
Services reading is ~0.9 s, at 5,000 x 50 endpoints ~7.5 s, and loading this is
a tenth of that.

The file is plain JSON, versioned: ``{"version", "tables"}``, each table its
chains, rules and sets as typed lists (:func:`encode`); the elements of dynamic
sets (the packet path adds them) are not kept. No code is loaded from it, and
only the model's own classes and enums are made from it.

It is trusted only when the kernel vouches for it: a sync that writes the file
writes its SHA-256 digest (the *stamp*) into each of our tables' ``applied`` set in
the same transaction, and :func:`load` makes nothing of a file whose digest is
not the stamp the kernel's tables hold. A file that was changed, damaged, or left
by an older sync is no checkpoint, and whoever changes our tables without writing
a new file (every other sync writes a random stamp) leaves them unvouched for.
What reaches nft from a trusted file is therefore what nftproxy wrote itself.

It is written atomically: a temporary file unique to the writer, mode 0600,
fsynced, then renamed over the old one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from nftproxy.nft import model
from nftproxy.nft.model import Element, Family, Set, Table

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


def encode(tables: Tables) -> Encoded:
    """The checkpoint of what tables hold."""
    doc = {
        "version": VERSION,
        "tables": {f.value: None if t is None else _plain(t) for f, t in tables.items()},
    }
    data = orjson.dumps(doc)
    return Encoded(data, stamp_of(data))


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


def load(path: Path, stamp: str) -> Tables | None:
    """The tables the checkpoint at path holds, when its stamp is ``stamp`` (the
    kernel's); None when missing, unreadable, of another version, or not vouched for."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not stamp.startswith(STAMP) or stamp_of(data) != stamp:
        return None
    try:
        doc = orjson.loads(data)
        if doc.get("version") != VERSION:
            return None
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
        out[_ELEMENTS] = [] if x.dynamic else [[e.key, e.value, e.comment] for e in x.elements]
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
        values.append(
            tuple(
                Element(tuple(k), None if v is None else tuple(v), c) for k, v, c in body[_ELEMENTS]
            )
        )
        values += [_made(v) for v in body[_ELEMENTS + 1 :]]
        return Set(*values)
    return _CLASSES[name](*(_made(v) for v in body))
