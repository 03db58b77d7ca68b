"""Kubernetes Events (``events.k8s.io/v1``), posted as client-go's EventRecorder posts them.

What nftproxy cannot do about an object is told on that object, where ``kubectl
describe`` shows it: an object it cannot program, a healthCheckNodePort it cannot
bind (on the Service), syncs that keep failing (on the Node). Reporting controller
``nftproxy``, reporting instance the node's name.

As client-go's ``tools/events``: the first occurrence is created; an identical one
(same object, reason, action, type and note) within :data:`SERIES_WINDOW` turns the
Event into a series (a patch with ``series.count`` 2); later repeats only count in
memory, and are patched every :data:`SERIES_REFRESH` and when the series ends
(:data:`SERIES_WINDOW` without a repeat). On top of that each object has a token
bucket (:data:`BURST` Events, then one per :data:`REFILL`), so a flapping object
cannot flood the API. Recording never blocks: a thread posts, from a bounded queue.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nftproxy import log

CONTROLLER = "nftproxy"
API_GROUP = "events.k8s.io"
VERBS = ("create", "patch")
"""What the recorder asks of the API server (the chart's role grants exactly this)."""
SERIES_WINDOW = 6 * 60.0
SERIES_REFRESH = 30 * 60.0
BURST = 10
REFILL = 5 * 60.0
QUEUE = 1000
NOTE_LIMIT = 1024
"""The API server refuses a note over 1 kB."""


@dataclass(frozen=True)
class Regarding:
    """The object an Event is about."""

    kind: str
    api_version: str
    name: str
    namespace: str = ""
    uid: str = ""

    @classmethod
    def of(cls, raw: Mapping[str, Any], kind: str, api_version: str) -> Regarding:
        meta = raw.get("metadata") or {}
        return cls(
            kind,
            str(raw.get("apiVersion") or api_version),
            str(meta.get("name", "")),
            str(meta.get("namespace") or ""),
            str(meta.get("uid") or ""),
        )

    def ref(self) -> dict[str, str]:
        out = {"kind": self.kind, "apiVersion": self.api_version, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.uid:
            out["uid"] = self.uid
        return out


@dataclass(frozen=True)
class Occurrence:
    regarding: Regarding
    reason: str
    action: str
    note: str
    type: str = "Warning"


@dataclass
class _Series:
    namespace: str
    name: str
    count: int
    last: float
    flushed: float
    patched_count: int = 1


@dataclass
class _Bucket:
    tokens: float = float(BURST)
    at: float = field(default_factory=time.monotonic)


def micro_time(at: float) -> str:
    """A MicroTime: RFC 3339 with microseconds, UTC."""
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    """Records Events; :meth:`run` is the posting thread's target."""

    def __init__(
        self,
        create: Callable[[str, dict[str, Any]], object],
        patch: Callable[[str, str, dict[str, Any]], object],
        instance: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._create = create
        self._patch = patch
        self.instance = instance
        self.clock = clock
        self._queue: queue.Queue[Occurrence | None] = queue.Queue(QUEUE)
        self._series: dict[Occurrence, _Series] = {}
        self._buckets: dict[Regarding, _Bucket] = {}
        self.posted = 0
        self.dropped = 0
        """Occurrences not posted: the queue full, the object over its budget, or
        the API refusing."""
        self._log = log.logger()

    def record(self, regarding: Regarding, reason: str, action: str, note: str) -> None:
        """Note a Warning Event about regarding (any thread; never blocks)."""
        try:
            self._queue.put_nowait(Occurrence(regarding, reason, action, note[:NOTE_LIMIT]))
        except queue.Full:
            self.dropped += 1

    def run(self, stop: threading.Event) -> None:
        """Post until stop is set."""
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self.handle(item)
                self.flush()
            except Exception as err:  # the API away, a refusal: counted, never fatal
                self.dropped += 1
                self._log.warning("event not posted", error=repr(err)[:300])

    def handle(self, item: Occurrence) -> None:
        """One occurrence: a new Event, a new series, or a count in memory."""
        now = self.clock()
        series = self._series.get(item)
        if series is not None and now - series.last < SERIES_WINDOW:
            series.count += 1
            series.last = now
            if series.count == 2:
                self._patch_series(series)
            return
        if series is not None:  # ended, and not flushed yet: its last count first
            self._end(item, series)
        if not self._allowed(item.regarding):
            self.dropped += 1
            return
        namespace = item.regarding.namespace or "default"  # cluster-scoped: "default"
        name = f"{item.regarding.name}.{time.time_ns():x}"
        self._create(namespace, self._event(item, namespace, name, now))
        self.posted += 1
        self._series[item] = _Series(namespace, name, 1, now, now)

    def flush(self) -> None:
        """Patch series counted since their last patch that ended (no repeat within
        the window) or are due for a refresh; forget ended ones."""
        now = self.clock()
        for item, series in list(self._series.items()):
            if now - series.last >= SERIES_WINDOW:
                self._end(item, series)
            elif series.count > series.patched_count and now - series.flushed >= SERIES_REFRESH:
                self._patch_series(series)
        mono = time.monotonic()
        for regarding, bucket in list(self._buckets.items()):
            if bucket.tokens + (mono - bucket.at) / REFILL >= BURST:
                del self._buckets[regarding]  # full again: as good as new (bounded memory)

    def _end(self, item: Occurrence, series: _Series) -> None:
        """A series without a repeat within the window: its last count written, then
        forgotten (a repeat after this starts a new Event)."""
        if series.count > series.patched_count:
            self._patch_series(series)
        del self._series[item]

    def _patch_series(self, series: _Series) -> None:
        body = {"series": {"count": series.count, "lastObservedTime": micro_time(series.last)}}
        self._patch(series.namespace, series.name, body)
        self.posted += 1
        series.flushed = self.clock()
        series.patched_count = series.count

    def _allowed(self, regarding: Regarding) -> bool:
        """The object's token bucket: BURST Events, then one per REFILL seconds."""
        bucket = self._buckets.setdefault(regarding, _Bucket())
        now = time.monotonic()
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.at) / REFILL)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _event(self, item: Occurrence, namespace: str, name: str, now: float) -> dict[str, Any]:
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "eventTime": micro_time(now),
            "reportingController": CONTROLLER,
            "reportingInstance": self.instance,
            "action": item.action,
            "reason": item.reason,
            "type": item.type,
            "note": item.note,
            "regarding": item.regarding.ref(),
        }
