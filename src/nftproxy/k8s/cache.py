"""The objects the reflectors delivered, parsed, and what changed since the last sync.

Watch handlers only record: an object is parsed (an invalid one is reported with
its kind, name and field, and the version held before stays), stored, and the
Service it belongs to is marked changed. An owner with an object no version of
which could be read is held at what the last process applied, when a restart
takes it (:meth:`Cache.settle`). Repeated changes fold into one mark.
The sync loop takes a :class:`Snapshot` and the changes together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nftproxy import log
from nftproxy.k8s.manifests import owner_of
from nftproxy.k8s.node import NodeInfo, parse_node, service_cidrs
from nftproxy.k8s.objects import (
    EndpointSlice,
    KubeObject,
    Service,
    Sourced,
    object_label,
    parse_object,
)
from nftproxy.k8s.problems import InvalidObjectError, Problem, report

SOURCE = "api"
_READ: dict[str, Any] = {}
"""What a list's item is replaced with once read."""
ObjectKey = tuple[str, str]
OwnerKey = tuple[str, str, str]
"""``("Service" or "Pod", namespace, name)``."""
TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
TRIGGERED = ("Service", "EndpointSlice")
MAX_TRIGGERS = 10_000
"""Trigger times kept until a sync lands (the oldest: they are the latest changes'
upper bound on latency); more are not recorded."""


def trigger_time(raw: Mapping[str, Any], arrived: float | None) -> float | None:
    """When the change to raw was triggered, as kube-proxy takes it: the
    ``last-change-trigger-time`` annotation (RFC 3339), else ``arrived`` (a watch
    event's arrival), else None (a list's item without it: not a change to time)."""
    annotations = (raw.get("metadata") or {}).get("annotations") or {}
    stamp = annotations.get(TRIGGER_ANNOTATION) if isinstance(annotations, Mapping) else None
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            pass
    return arrived


@dataclass
class Changes:
    """What changed since the last sync: Services (by namespace/name, also when one
    of their slices did), Pods, and whether the node or anything node-wide did."""

    services: set[ObjectKey] = field(default_factory=set)
    endpoint_changes: int = 0
    service_changes: int = 0
    node: bool = False
    pods: set[ObjectKey] = field(default_factory=set)
    triggers: list[float] = field(default_factory=list)
    """When each Service or EndpointSlice change was triggered (wall clock, see
    :func:`trigger_time`), for the programming latency."""

    def __bool__(self) -> bool:
        return bool(self.services or self.node or self.pods)


@dataclass(frozen=True)
class Snapshot:
    """Everything the cache holds, at one moment."""

    objects: list[Sourced]
    node: NodeInfo | None
    cidrs: tuple[str, ...]
    slices: dict[ObjectKey, list[EndpointSlice]]


class Cache:
    """Objects by kind and key; thread-safe; ``on_change`` is called outside the lock
    whenever something changed (the loop's wake-up and healthz's "queued")."""

    def __init__(self, node_name: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.node_name = node_name
        self.on_change = on_change
        self._lock = threading.Lock()
        self._objects: dict[str, dict[ObjectKey, KubeObject]] = {
            "Service": {},
            "EndpointSlice": {},
            "Pod": {},
        }
        self._versions: dict[tuple[str, ObjectKey], str] = {}
        self._slices: dict[ObjectKey, dict[str, EndpointSlice]] = {}
        """EndpointSlices by the Service they belong to, then by name."""
        self._node: NodeInfo | None = None
        self._cidrs: dict[str, tuple[str, ...]] = {}
        self._changes = Changes()
        self._unread: dict[tuple[str, ObjectKey], OwnerKey] = {}
        """Objects no version of which could be read (each seen was invalid), and
        the Service or Pod they belong to."""
        self._frozen: dict[OwnerKey, str] = {}
        """Owners held at what the last process applied (see :meth:`settle`), and
        their fingerprints then."""
        self.on_invalid: Callable[[str, Mapping[str, Any], str, str], None] = _ignore
        """Called (under the lock: it must not block) with an object that cannot be
        programmed: its kind, the object, the field and the reason (an Event)."""
        self.started = time.time()
        """Triggers from before the cache began are not this process's changes."""
        self._log = log.logger()

    # -- the reflectors' side -------------------------------------------------

    def replace(self, kind: str, items: list[dict[str, Any]]) -> None:
        """A fresh list in one piece: add and change what it holds, delete what it lacks."""
        self.retain(kind, self.put(kind, items))

    def put(self, kind: str, items: list[dict[str, Any]]) -> set[ObjectKey]:
        """One page of a list: add and change what it holds; the keys it held. The
        list is emptied item by item as it is read, so that a whole list's JSON
        (some 250 MB of Python objects at 250,000 endpoints) goes while its objects
        are made, not after."""
        keys = {_key(item) for item in items}
        with self._lock:
            changed = False
            for i, item in enumerate(items):
                items[i] = _READ
                changed |= self._put(kind, item)
            changed &= bool(self._changes)
        if changed:
            self.on_change()
        return keys

    def retain(self, kind: str, keys: set[ObjectKey]) -> None:
        """The end of a list: delete what none of its pages held."""
        with self._lock:
            changed = False
            for key in list(self._held(kind)):
                if key not in keys:
                    changed |= self._drop(kind, key)
            changed &= bool(self._changes)
        if changed:
            self.on_change()

    def event(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        """One watch event."""
        with self._lock:
            if type_ == "DELETED":
                changed = self._drop(kind, _key(obj))
                self._triggered(kind, obj, changed, time.time(), deleted=True)
            else:
                changed = self._put(kind, obj, arrived=time.time())
            changed &= bool(self._changes)  # a Pod without hostPorts changes nothing
        if changed:
            self.on_change()

    def _held(self, kind: str) -> list[ObjectKey]:
        if kind == "Node":
            return [("", self._node.name)] if self._node else []
        if kind == "ServiceCIDR":
            return [("", n) for n in self._cidrs]
        return list(self._objects[kind])

    def _put(self, kind: str, raw: dict[str, Any], arrived: float | None = None) -> bool:
        key = _key(raw)
        version = str((raw.get("metadata") or {}).get("resourceVersion", ""))
        if version and self._versions.get((kind, key)) == version:
            return False  # a relist of something unchanged
        self._versions[(kind, key)] = version
        try:
            changed = self._store(kind, key, raw)
        except InvalidObjectError as err:
            # The version held before (if any) stays: its rules are not lost.
            report([Problem(SOURCE, object_label(raw), err.field, err.message)])
            self._unreadable(kind, key, raw)
            self.on_invalid(kind, raw, err.field, err.message)
            return False
        self._triggered(kind, raw, changed, arrived)
        return changed

    def _triggered(
        self,
        kind: str,
        raw: Mapping[str, Any],
        changed: bool,
        arrived: float | None,
        *,
        deleted: bool = False,
    ) -> None:
        """Record when a Service's or slice's change was triggered, if it was after
        this cache began (as kube-proxy's tracker; a deletion: when it arrived)."""
        if not changed or kind not in TRIGGERED or len(self._changes.triggers) >= MAX_TRIGGERS:
            return
        at = arrived if deleted else trigger_time(raw, arrived)
        if at is not None and at >= self.started:
            self._changes.triggers.append(at)

    def _unreadable(self, kind: str, key: ObjectKey, raw: Mapping[str, Any]) -> None:
        """Note an invalid object of which no earlier version is held."""
        owner = owner_of(raw)
        if kind in self._objects and key not in self._objects[kind] and owner is not None:
            self._unread[(kind, key)] = ("Pod" if kind == "Pod" else "Service", *owner)

    def _readable(self, kind: str, key: ObjectKey) -> bool:
        """An object is valid or gone: an owner held for it alone is built again
        (whether one was)."""
        owner = self._unread.pop((kind, key), None)
        if owner is None or owner not in self._frozen or owner in self._unread.values():
            return False
        del self._frozen[owner]
        kind_, ns, name = owner
        (self._changes.pods if kind_ == "Pod" else self._changes.services).add((ns, name))
        return True

    def _store(self, kind: str, key: ObjectKey, raw: dict[str, Any]) -> bool:
        if kind == "Node":
            if key[1] != self.node_name:
                return False
            self._node = parse_node(raw)
            self._changes.node = True
            return True
        if kind == "ServiceCIDR":
            self._cidrs[key[1]] = service_cidrs(raw)
            self._changes.node = True
            return True
        obj = parse_object(raw)
        if obj is None:
            return self._drop(kind, key)
        self._readable(kind, key)
        old = self._objects[kind].get(key)
        if old is not None:
            self._unindex(old)
            self._mark(old, count=False)  # a slice may have moved to another Service
        self._objects[kind][key] = obj
        if isinstance(obj, EndpointSlice):
            self._slices.setdefault((obj.namespace, obj.service), {})[obj.name] = obj
        self._mark(obj)
        return True

    def _unindex(self, obj: KubeObject) -> None:
        if isinstance(obj, EndpointSlice):
            owned = self._slices.get((obj.namespace, obj.service), {})
            owned.pop(obj.name, None)
            if not owned:
                self._slices.pop((obj.namespace, obj.service), None)

    def _drop(self, kind: str, key: ObjectKey) -> bool:
        self._versions.pop((kind, key), None)
        if kind == "Node":
            if self._node is None or self._node.name != key[1]:
                return False
            self._node = None
            self._changes.node = True
            return True
        if kind == "ServiceCIDR":
            self._changes.node = True
            return self._cidrs.pop(key[1], None) is not None
        released = self._readable(kind, key)
        obj = self._objects[kind].pop(key, None)
        if obj is None:
            return released
        self._unindex(obj)
        self._mark(obj)
        return True

    def _mark(self, obj: KubeObject, *, count: bool = True) -> None:
        """Note what obj's change touches; a Pod matters only with hostPorts."""
        if isinstance(obj, Service):
            self._changes.services.add((obj.namespace, obj.name))
            self._changes.service_changes += count
        elif isinstance(obj, EndpointSlice):
            self._changes.services.add((obj.namespace, obj.service))
            self._changes.endpoint_changes += count
        elif obj.host_ports:
            self._changes.pods.add((obj.namespace, obj.name))

    # -- the loop's side ------------------------------------------------------

    def take(self) -> tuple[Snapshot, Changes]:
        """Everything held, and what changed since the last take (now cleared)."""
        with self._lock:
            return self._snapshot(None, None), self._take_changes()

    def held(self) -> Snapshot:
        """Everything held; what changed stays marked."""
        with self._lock:
            return self._snapshot(None, None)

    def take_changed(self) -> tuple[Snapshot, Changes]:
        """What changed since the last take (now cleared), and the objects held for
        it: the changed Services with their slices, and the changed Pods. O(changes)."""
        with self._lock:
            changes = self._take_changes()
            return self._snapshot(changes.services, changes.pods), changes

    def _take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        for kind, ns, name in self._frozen:
            (changes.pods if kind == "Pod" else changes.services).discard((ns, name))
        return changes

    def _snapshot(self, services: set[ObjectKey] | None, pods: set[ObjectKey] | None) -> Snapshot:
        """Everything held (None), or the given Services and Pods."""
        objects: list[Sourced] = []
        if services is None or pods is None:
            objects = [(SOURCE, obj) for kind in self._objects.values() for obj in kind.values()]
            slices = {k: list(v.values()) for k, v in self._slices.items()}
        else:
            slices = {k: list(self._slices[k].values()) for k in services if k in self._slices}
            held = self._objects["Service"]
            objects = [(SOURCE, held[k]) for k in services if k in held]
            objects += [(SOURCE, sl) for owned in slices.values() for sl in owned]
            objects += [
                (SOURCE, self._objects["Pod"][k]) for k in pods if k in self._objects["Pod"]
            ]
        cidrs = tuple(c for cs in self._cidrs.values() for c in cs)
        return Snapshot(objects, self._node, cidrs, slices)

    # -- a restart's side --------------------------------------------------------

    def fingerprints(self) -> dict[tuple[str, str, str], str]:
        """What each Service and hostPort Pod held was built from: the
        resourceVersions of the Service and its slices, or of the Pod. Those with
        changes not yet taken are left out (what the kernel holds for them is older)."""
        with self._lock:
            out = {
                ("Service", *key): self._fingerprint(key)
                for key in {*self._objects["Service"], *self._slices}
                if key not in self._changes.services
            }
            for key in self._objects["Pod"]:
                if key not in self._changes.pods:
                    out[("Pod", *key)] = self._versions.get(("Pod", key), "")
            return out | self._frozen

    def _fingerprint(self, key: ObjectKey) -> str:
        parts = [self._versions.get(("Service", key), "")]
        ns = key[0]
        parts += sorted(
            f"{name}={self._versions.get(('EndpointSlice', (ns, name)), '')}"
            for name in self._slices.get(key, {})
        )
        return "" if any(p == "" or p.endswith("=") for p in parts) else ",".join(parts)

    def settle(self, kept: Mapping[tuple[str, str, str], str]) -> int:
        """After the first lists of a restart: drop the changes of the Services and
        Pods whose fingerprints are still those kept (the kernel holds them as
        built), and of the node (the caller found its settings unchanged); mark the
        kept ones the lists no longer hold (they went while nothing watched). The
        number of Services and Pods settled.

        An owner with an object no version of which could be read (invalid since the
        start) is held at what was kept for it, as ``apply`` keeps one at what the
        kernel holds: the last valid version there is. Its changes are put off until
        that object is valid or deleted; then it is built from what is held."""
        with self._lock:
            self._frozen = {o: kept[o] for o in self._unread.values() if kept.get(o)}
            services, pods = self._changes.services, self._changes.pods
            same = {k for k in services if _same(kept.get(("Service", *k)), self._fingerprint(k))}
            held_pods = {k for k in pods if k in self._objects["Pod"]}
            same_pods = {
                k
                for k in held_pods
                if _same(kept.get(("Pod", *k)), self._versions.get(("Pod", k), ""))
            }
            services -= same
            pods -= same_pods
            for kind, ns, name in kept:
                key = (ns, name)
                if kind == "Service" and key not in self._objects["Service"]:
                    services.add(key)
                elif kind == "Pod" and key not in self._objects["Pod"]:
                    pods.add(key)
            self._changes.node = False
            return len(same) + len(same_pods)

    def held_owners(self) -> frozenset[OwnerKey]:
        """The owners held at what the last process applied (see :meth:`settle`)."""
        with self._lock:
            return frozenset(self._frozen)

    def pending(self) -> bool:
        """Whether anything changed since the last take."""
        with self._lock:
            return bool(self._changes)


def _same(kept: str | None, now: str) -> bool:
    """Whether a fingerprint kept is the one now (an empty one matches nothing)."""
    return bool(kept) and kept == now


def _ignore(kind: str, raw: Mapping[str, Any], field: str, message: str) -> None:
    """The default of :attr:`Cache.on_invalid`: the log line is enough."""


def _key(raw: Mapping[str, Any]) -> ObjectKey:
    meta = raw.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))
