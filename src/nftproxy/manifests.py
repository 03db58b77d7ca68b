"""Reading Kubernetes manifests from files and folders (YAML or JSON)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nftproxy.api.node import NodeInfo, parse_node, service_cidrs
from nftproxy.objects import Sourced, object_label, parse_object
from nftproxy.problems import InvalidObjectError, Problem

SUFFIXES = (".yaml", ".yml", ".json")
KINDS = ("Service", "EndpointSlice", "Pod", "Node", "ServiceCIDR")


@dataclass
class Loaded:
    """What a set of manifests held: usable objects, and everything skipped."""

    objects: list[Sourced] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    nodes: list[tuple[str, NodeInfo]] = field(default_factory=list)
    service_cidrs: list[str] = field(default_factory=list)


def manifest_files(path: Path) -> list[Path]:
    """path itself, or every manifest file below a folder, in a stable order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    return [path]


class UnreadableError(ValueError):
    """A manifest file that is not valid YAML or JSON."""


def _documents(path: Path) -> list[Any]:
    """Every document in a file. JSON goes through orjson: a whole cluster as one
    ``kind: List`` reads several times faster than with PyYAML or the json module.
    A file is JSON by its name or by its content (``kubectl get -o json > x.yaml``);
    a ``.yaml`` file that starts like JSON but is not (a YAML flow mapping) is YAML."""
    data = path.read_bytes()
    try:
        if path.suffix == ".json":
            return [orjson.loads(data)]
        if data.lstrip()[:1] in (b"{", b"["):
            with contextlib.suppress(orjson.JSONDecodeError):
                return [orjson.loads(data)]
        import yaml  # noqa: PLC0415 - JSON-only runs skip its import

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return list(yaml.load_all(data, Loader=loader))
    except (orjson.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnreadableError(str(err)) from None
    except Exception as err:  # yaml.YAMLError; yaml is imported lazily
        if type(err).__module__.startswith("yaml"):
            raise UnreadableError(str(err)) from None
        raise


def _items(doc: Any) -> Iterator[Any]:
    """A document's objects, with ``kind: List`` (and ``*List``) unwrapped."""
    if isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List"):
        for item in doc.get("items") or []:
            yield from _items(item)
    elif doc is not None:
        yield doc


def load_objects(docs: Iterator[Any], source: str, into: Loaded) -> None:
    """Parse raw API objects into ``into``, recording what was skipped and why."""
    for doc in docs:
        for item in _items(doc):
            if not isinstance(item, Mapping):
                into.problems.append(Problem(source, "", "", "not a Kubernetes object"))
                continue
            if item.get("kind") not in KINDS:
                label = object_label(item)
                into.problems.append(
                    Problem(source, label, "kind", f"ignored: kind {item.get('kind')!r}", note=True)
                )
                continue
            try:
                _add(item, source, into)
            except InvalidObjectError as err:
                into.problems.append(Problem(source, object_label(item), err.field, err.message))


def _add(item: Mapping[str, Any], source: str, into: Loaded) -> None:
    kind = item.get("kind")
    if kind == "Node":
        into.nodes.append((source, parse_node(item)))
    elif kind == "ServiceCIDR":
        into.service_cidrs += service_cidrs(item)
    else:
        obj = parse_object(item)
        if obj is not None:
            into.objects.append((source, obj))


def load_paths(paths: list[Path]) -> Loaded:
    """Read every manifest under paths; a file that does not parse is skipped whole."""
    loaded = Loaded()
    for path in paths:
        if not path.exists():
            loaded.problems.append(Problem(str(path), "", "", "no such file or folder"))
            continue
        for file in manifest_files(path):
            try:
                docs = _documents(file)
            except UnreadableError as err:
                loaded.problems.append(Problem(str(file), "", "", f"unreadable: {err}"))
                continue
            load_objects(iter(docs), str(file), loaded)
    return loaded
