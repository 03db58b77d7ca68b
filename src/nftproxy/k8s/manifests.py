"""Reading Kubernetes manifests from files and folders (YAML or JSON).

What is not Kubernetes objects at all (a document without ``apiVersion`` and
``kind``, a file with no object in it, a file that does not parse) is an error in
:attr:`Loaded.errors`: a command refuses such input whole, as kubectl does. An
object of a kind nftproxy proxies that is invalid is skipped, and the Service (or
Pod) it belongs to is recorded in :attr:`Loaded.invalid`, so that ``apply`` can
keep what the kernel holds for it (:mod:`nftproxy.ruleset.keep`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nftproxy.k8s.node import NodeInfo, parse_node, service_cidrs
from nftproxy.k8s.objects import SERVICE_NAME_LABEL, Sourced, object_label, parse_object
from nftproxy.k8s.problems import InvalidObjectError, Problem

SUFFIXES = (".yaml", ".yml", ".json")
KINDS = ("Service", "EndpointSlice", "Pod", "Node", "ServiceCIDR")


@dataclass
class Loaded:
    """What a set of manifests held: usable objects, and everything skipped."""

    objects: list[Sourced] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    nodes: list[tuple[str, NodeInfo]] = field(default_factory=list)
    service_cidrs: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    """Input that is not Kubernetes objects: nothing may be applied from it."""
    invalid: dict[tuple[str, str], list[Problem]] = field(default_factory=dict)
    """The Services and Pods (namespace, name) with an invalid object of their own
    (a Service's EndpointSlices count as the Service's)."""
    unowned: list[Problem] = field(default_factory=list)
    """Invalid objects whose Service or Pod cannot be told, and invalid Nodes and
    ServiceCIDRs: what they would have changed is unknown."""

    def keep(self, problem: Problem, owner: tuple[str, str] | None) -> None:
        """Record an invalid object of owner (None: an owner that cannot be told)."""
        self.problems.append(problem)
        if owner is None:
            self.unowned.append(problem)
        else:
            self.invalid.setdefault(owner, []).append(problem)


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
                problem = Problem(source, object_label(item), err.field, err.message)
                into.keep(problem, owner_of(item))


def owner_of(item: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (namespace, name) of the Service or Pod a raw object belongs to, as far as
    it can be read: a Service's or Pod's own, an EndpointSlice's Service label;
    None for other kinds or unreadable metadata."""
    meta = item.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    ns = meta.get("namespace") or "default"
    name: Any = meta.get("name")
    if item.get("kind") == "EndpointSlice":
        labels = meta.get("labels")
        name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    elif item.get("kind") not in ("Service", "Pod"):
        return None
    if not isinstance(ns, str) or not isinstance(name, str) or not name:
        return None
    return ns, name


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


def document_errors(docs: list[Any], source: str) -> list[Problem]:
    """What makes a file's documents not Kubernetes objects: a document without
    ``apiVersion`` and ``kind`` (named by its index), a demo scenario, a file with
    no object at all. A ``kind: List`` without items is allowed: no objects."""
    out = []
    objects = 0
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"document {i}"
        if isinstance(doc, Mapping) and "objects" in doc and "kind" not in doc:
            hint = "a demo scenario, not Kubernetes objects: use nftproxy demo --scenario"
            out.append(Problem(source, where, "", hint))
        elif not isinstance(doc, Mapping) or not doc.get("apiVersion") or not doc.get("kind"):
            out.append(Problem(source, where, "", "not a Kubernetes object: no apiVersion or kind"))
        elif str(doc["kind"]).endswith("List"):
            objects += 1 if isinstance(doc.get("items") or [], list) else 0
        else:
            objects += 1
    if not out and objects == 0:
        out.append(Problem(source, "", "", "no Kubernetes object in this file"))
    return out


def load_paths(paths: list[Path]) -> Loaded:
    """Read every manifest under paths. A missing path, a file that does not parse
    or does not hold Kubernetes objects is an error (:attr:`Loaded.errors`)."""
    loaded = Loaded()
    for path in paths:
        if not path.exists():
            loaded.errors.append(Problem(str(path), "", "", "no such file or folder"))
            continue
        files = manifest_files(path)
        if not files:
            loaded.errors.append(Problem(str(path), "", "", "no .yaml, .yml or .json file here"))
        for file in files:
            try:
                docs = _documents(file)
            except UnreadableError as err:
                loaded.errors.append(Problem(str(file), "", "", f"unreadable: {err}"))
                continue
            errors = document_errors(docs, str(file))
            loaded.errors += errors
            if not errors:
                load_objects(iter(docs), str(file), loaded)
    return loaded
