"""List and watch one resource with the official ``kubernetes`` client.

A :class:`Reflector` lists, then watches from the list's resourceVersion, and
keeps going: a watch that ends (its timeout) resumes from the last
resourceVersion it saw (BOOKMARKs keep it fresh); ``410 Gone`` (an ERROR
event, or the status of a request) makes it list again, and the sink is told
to replace everything it holds for the resource, so that nothing deleted in
the gap survives and nothing is applied twice; any other failure (connection
refused or dropped, 5xx) is retried with backoff (tenacity, full jitter) from the
last resourceVersion, for as long as the API server is away.

A reflector never dies. A watch line that is not an event (not JSON, not an
object, a type or object of the wrong shape) is logged with its resource,
counted (``on_error(kind, reason)``) and followed by a fresh watch from the last
good resourceVersion; a list page without its metadata is listed again with
backoff. Anything else that escapes is logged, counted and retried after
backoff. A resource the server does not serve, or that this proxy may not list
(404, 403), is given up on when the :class:`Watched` is ``optional``: it counts
as listed and empty (ServiceCIDRs on clusters before 1.33, Pods without RBAC).

Each watch asks to stay open for a random time between ``watch_seconds`` and
twice that (client-go picks 5-10 minutes), so that a fleet does not reconnect in
step.

Raw JSON goes straight to the sink (``_preload_content=False``): the client's
model classes would cost seconds at 10,000 Services.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import tenacity
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from nftproxy import log
from nftproxy.k8s.listbody import parse_list

WATCH_SECONDS = 300
"""The shortest a watch asks to stay open; the longest is twice that (client-go
picks 5-10 minutes at random)."""
CONNECT_SECONDS = 5.0
LIST_SECONDS = 60.0
"""The longest one list page may take to arrive."""
BACKOFF_MAX = 30.0
PAGE_SIZE = 500
"""Objects per list page (kube's reflectors ask for 500)."""
PUT_BATCH = 500
"""Items parsed and stored at a time. The first list, from the watch cache, comes
whole: it is parsed as it arrives (:mod:`nftproxy.k8s.listbody`), so that a window
of its bytes and one batch of its items are all it holds at once."""
CHUNK = 1 << 20
"""Bytes read from a list response at a time."""


class Sink(Protocol):
    """Where a reflector delivers what it sees."""

    def put(self, kind: str, items: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """One page of a list: objects of kind that exist now; their keys."""

    def retain(self, kind: str, keys: set[tuple[str, str]]) -> None:
        """The end of a list: objects of kind not among keys are gone."""

    def event(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""


@dataclass(frozen=True)
class Watched:
    """A resource to list and watch: its kind, the client call, and selectors."""

    kind: str
    api_version: str
    call: Callable[..., Any]
    """A ``list_*`` method of a kubernetes API class."""
    label_selector: str = ""
    field_selector: str = ""
    optional: bool = False
    """A 404 or 403 on its list means "none here": listed empty, not watched."""


class GoneError(Exception):
    """The resourceVersion is older than the server's history: list again."""


class WatchFailedError(Exception):
    """The watch stream carried an ERROR event other than 410."""


class MalformedError(Exception):
    """What the server sent is not what the API sends: ``reason`` says how."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
NOT_SERVED = (403, 404)


def _transient(err: BaseException) -> bool:
    if isinstance(err, ApiException):
        return bool(err.status != 410)
    return isinstance(
        err, (urllib3.exceptions.HTTPError, OSError, WatchFailedError, ValueError, MalformedError)
    )


def check_event(event: Any) -> tuple[str, Mapping[str, Any]]:
    """A watch event's type and object, checked: :class:`MalformedError` otherwise."""
    if not isinstance(event, Mapping):
        raise MalformedError("not an object", type(event).__name__)
    type_, obj = event.get("type"), event.get("object")
    if type_ not in EVENT_TYPES:
        raise MalformedError("bad type", repr(type_)[:80])
    if not isinstance(obj, Mapping):
        raise MalformedError("bad object", type(obj).__name__)
    if type_ != "ERROR" and not isinstance(obj.get("metadata"), Mapping):
        raise MalformedError("no metadata", str(type_))
    return str(type_), obj


def check_page(head: Any) -> tuple[str, str]:
    """A list page's resourceVersion and continue token, checked (head: the page
    without its items, :func:`~nftproxy.k8s.listbody.parse_list`)."""
    if not isinstance(head, Mapping):
        raise MalformedError("bad list", type(head).__name__)
    meta = head.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("resourceVersion"):
        raise MalformedError("bad list", "no metadata.resourceVersion")
    if not isinstance(head.get("items") or [], list):
        raise MalformedError("bad list", "items is not a list")
    return str(meta["resourceVersion"]), str(meta.get("continue") or "")


def backoff(attempt: int, cap: float, base: float = 0.2) -> float:
    """How long to wait before attempt n+1: full jitter, uniform in
    ``[0, min(cap, base * 2**n))`` (a fleet that lost the API server together
    does not come back together, even at the cap)."""
    return random.uniform(0, min(cap, base * 2**attempt))


OnError = Callable[[str, str], None]
"""Told of every failure: the resource's kind and a short reason (a metric label)."""


def reason_of(err: BaseException) -> str:
    """A failure as a short, bounded label."""
    if isinstance(err, MalformedError):
        return err.reason
    if isinstance(err, ApiException):
        return f"http {err.status}"
    if isinstance(err, WatchFailedError):
        return "watch error"
    if isinstance(err, ValueError):
        return "not JSON"
    if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
        return "connection"
    return "crash"


class Reflector:
    """Keeps a sink in step with one resource; :meth:`run` is a thread's target."""

    def __init__(
        self,
        what: Watched,
        sink: Sink,
        stop: threading.Event,
        *,
        watch_seconds: int | None = None,
        backoff_max: float = BACKOFF_MAX,
        page_size: int = PAGE_SIZE,
        on_error: OnError | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.sink = sink
        self.stop = stop
        self.synced = threading.Event()
        """Set once the first list has been delivered."""
        self.resource_version = ""
        self.watch_seconds = watch_seconds
        self.page_size = page_size
        self.on_error = on_error or (lambda kind, reason: None)
        self.clock = clock
        self.lists = 0
        self.pages = 0
        self.failures = 0
        self.given_up = False
        """An optional resource the server does not serve (or lets us list)."""
        self.failing_since: float | None = clock()
        """When the current run of failures began (None: the last request went well);
        the start counts until the first list."""
        self._log = log.logger().bind(kind=what.kind)
        self.backoff_max = backoff_max
        self._retrying = tenacity.Retrying(
            # Keyword-named as tenacity 8.0 passes them (retry_state=...).
            wait=lambda retry_state: backoff(retry_state.attempt_number, backoff_max),
            retry=tenacity.retry_if_exception(self._retryable),
            stop=lambda retry_state: stop.is_set(),
            sleep=stop.wait,  # type: ignore[arg-type] # returns a bool, ignored
            before_sleep=self._failed,
            reraise=True,
        )

    def _retryable(self, err: BaseException) -> bool:
        """Transient failures are retried, but an optional resource's 403 or 404,
        which means it is not there for us."""
        unserved = isinstance(err, ApiException) and err.status in NOT_SERVED
        return _transient(err) and not (self.what.optional and unserved)

    def in_sync(self, bound: float) -> bool:
        """Whether the resource has not been failing for longer than bound (seconds)."""
        since = self.failing_since
        return since is None or self.clock() - since < bound

    def _ok(self) -> None:
        self.failing_since = None

    def _failed(self, retry_state: tenacity.RetryCallState) -> None:
        state = retry_state
        err = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        self._count(err)
        self._log.warning(
            "list/watch failed; retrying",
            reason=reason_of(err) if err else None,
            error=str(err)[:200],
            retry_in=round(wait, 2),
        )

    def _count(self, err: BaseException | None) -> None:
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self.clock()
        self.on_error(self.what.kind, reason_of(err) if err else "crash")

    def run(self) -> None:
        """List and watch until stop is set: nothing else ends it."""
        attempt = 0
        while not self.stop.is_set() and not self.given_up:
            try:
                self._retrying(self._step)
                attempt = 0
            except (GoneError, ApiException) as err:
                if isinstance(err, ApiException) and err.status in NOT_SERVED:
                    self._not_served(err)
                self.resource_version = ""  # 410: list again
            except Exception as err:
                if self.stop.is_set():
                    return
                attempt += 1
                self._count(err)
                wait = backoff(attempt, self.backoff_max)
                self._log.error(
                    "reflector failed; starting again",
                    error=repr(err)[:200],
                    retry_in=round(wait, 2),
                )
                self.stop.wait(wait)

    def _not_served(self, err: ApiException) -> None:
        """A 403 or 404: an optional resource counts as listed and empty."""
        if not self.what.optional:
            return
        self._log.warning(
            "not served or not allowed; going on without it", status=err.status, reason=err.reason
        )
        self.sink.retain(self.what.kind, set())
        self.given_up = True
        self._ok()
        self.lists += 1
        self.synced.set()

    def _step(self) -> None:
        if not self.resource_version:
            self._list()
        else:
            self._watch()

    def _kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"_preload_content": False}
        if self.what.label_selector:
            out["label_selector"] = self.what.label_selector
        if self.what.field_selector:
            out["field_selector"] = self.what.field_selector
        return out

    def _list(self) -> None:
        """List in pages (the first list from the watch cache, see :meth:`_request`);
        every page is of the snapshot the first one fixed. An expired continue
        token is a 410: the list starts again."""
        keys: set[tuple[str, str]] = set()
        token, version = "", ""
        started = time.monotonic()
        while True:
            rv, token = self._page(token, keys)
            version = version or rv
            if not token:
                break
        self.sink.retain(self.what.kind, keys)
        self.resource_version = version
        self.lists += 1
        seconds = round(time.monotonic() - started, 3)
        self._log.info("listed", kind=self.what.kind, objects=len(keys), seconds=seconds)
        self._ok()
        self.synced.set()

    def _page(self, token: str, keys: set[tuple[str, str]]) -> tuple[str, str]:
        """Put one page's items, as they arrive, adding their keys to keys; the
        page's resourceVersion and continue token."""
        resp = self._request(token)
        try:
            head, items = parse_list(resp.stream(CHUNK))
            rv, token = check_page(head)
            while batch := list(itertools.islice(items, PUT_BATCH)):
                keys |= self.sink.put(self.what.kind, self._typed(batch))
        except BaseException:
            resp.close()  # what is left unread must not go back to the pool
            raise
        finally:
            resp.release_conn()
        self.pages += 1
        return rv, token

    def _typed(self, items: list[Any]) -> list[dict[str, Any]]:
        """List items (which carry no kind) as objects, all but objects dropped."""
        kind, version = self.what.kind, self.what.api_version
        return [{"kind": kind, "apiVersion": version, **i} for i in items if isinstance(i, Mapping)]

    def _request(self, token: str) -> Any:
        kwargs = {**self._kwargs(), "limit": self.page_size}
        if token:
            kwargs["_continue"] = token
        elif not self.lists:
            # The first list as client-go's reflector makes it: "0" (any version) is
            # served by the API server's watch cache, whole, whatever the limit. In
            # pages of 500 at kube-proxy's 5 QPS, 10,000 Services and their slices
            # would wait about 6 s. Lists after a 410 read the latest version, paged.
            kwargs["resource_version"] = "0"
        return self.what.call(**kwargs, _request_timeout=(CONNECT_SECONDS, LIST_SECONDS))

    def _watch(self) -> None:
        """Watch from the last resourceVersion. A line that is not an event raises
        :class:`MalformedError`: a fresh watch follows, after backoff."""
        seconds = self.watch_seconds or int(random.uniform(WATCH_SECONDS, 2 * WATCH_SECONDS))
        resp = self.what.call(
            **self._kwargs(),
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _request_timeout=(CONNECT_SECONDS, seconds + 30),
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    return
                if line:
                    self._on_event(*check_event(orjson.loads(line)))
                    self._ok()
        finally:
            resp.release_conn()

    def _on_event(self, type_: str, obj: Mapping[str, Any]) -> None:
        if type_ == "ERROR":
            if obj.get("code") == 410:
                self._log.info("resourceVersion expired; listing again", message=obj.get("message"))
                raise GoneError(obj.get("message"))
            raise WatchFailedError(f"watch error: {obj.get('code')} {obj.get('message')}")
        rv = obj["metadata"].get("resourceVersion")
        if type_ != "BOOKMARK":
            event = {"kind": self.what.kind, "apiVersion": self.what.api_version, **obj}
            self.sink.event(self.what.kind, type_, event)
        if rv:
            self.resource_version = str(rv)
