"""List and watch one resource with the official ``kubernetes`` client.

A :class:`Reflector` lists, then watches from the list's resourceVersion, and
keeps going: a watch that ends (its timeout) resumes from the last
resourceVersion it saw (BOOKMARKs keep it fresh); ``410 Gone`` (an ERROR
event, or the status of a request) makes it list again, and the sink is told
to replace everything it holds for the resource, so that nothing deleted in
the gap survives and nothing is applied twice; any other failure (connection
refused or dropped, 5xx) is retried with backoff (tenacity) from the last
resourceVersion, for as long as the API server is away.

Raw JSON goes straight to the sink (``_preload_content=False``): the client's
model classes would cost seconds at 10,000 Services.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import tenacity
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from nftproxy import log

WATCH_SECONDS = 300
"""How long one watch asks to stay open (kube's reflectors pick 5-10 minutes)."""
CONNECT_SECONDS = 5.0
BACKOFF_MAX = 30.0
PAGE_SIZE = 500
"""Objects per list page (kube's reflectors ask for 500): the JSON of one page is
all a list holds in memory at once."""


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


class GoneError(Exception):
    """The resourceVersion is older than the server's history: list again."""


class WatchFailedError(Exception):
    """The watch stream carried an ERROR event other than 410."""


def _transient(err: BaseException) -> bool:
    if isinstance(err, ApiException):
        return bool(err.status != 410)
    return isinstance(err, (urllib3.exceptions.HTTPError, OSError, WatchFailedError, ValueError))


class Reflector:
    """Keeps a sink in step with one resource; :meth:`run` is a thread's target."""

    def __init__(
        self,
        what: Watched,
        sink: Sink,
        stop: threading.Event,
        *,
        watch_seconds: int = WATCH_SECONDS,
        backoff_max: float = BACKOFF_MAX,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.what = what
        self.sink = sink
        self.stop = stop
        self.synced = threading.Event()
        """Set once the first list has been delivered."""
        self.resource_version = ""
        self.watch_seconds = watch_seconds
        self.page_size = page_size
        self.lists = 0
        self.pages = 0
        self.failures = 0
        self._log = log.logger().bind(kind=what.kind)
        self._retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=backoff_max),
            retry=tenacity.retry_if_exception(_transient),
            stop=lambda _: stop.is_set(),
            sleep=stop.wait,  # type: ignore[arg-type] # returns a bool, ignored
            before_sleep=self._failed,
            reraise=True,
        )

    def _failed(self, state: tenacity.RetryCallState) -> None:
        self.failures += 1
        err = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        self._log.warning("list/watch failed; retrying", error=str(err), retry_in=round(wait, 2))

    def run(self) -> None:
        """List and watch until stop is set."""
        while not self.stop.is_set():
            try:
                self._retrying(self._step)
            except (GoneError, ApiException):
                self.resource_version = ""  # 410: list again
            except Exception as err:
                if not self.stop.is_set():
                    self._log.error("reflector stopped", error=repr(err))
                    raise

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
        """List in pages; every page is of the snapshot the first one fixed. An
        expired continue token is a 410: the list starts again."""
        keys: set[tuple[str, str]] = set()
        token, version = "", ""
        while True:
            body = self._page(token)
            items = [
                {"kind": self.what.kind, "apiVersion": self.what.api_version, **item}
                for item in body.get("items") or []
            ]
            keys |= self.sink.put(self.what.kind, items)
            meta = body["metadata"]
            version = version or str(meta["resourceVersion"])
            token = meta.get("continue") or ""
            if not token:
                break
        self.sink.retain(self.what.kind, keys)
        self.resource_version = version
        self.lists += 1
        self.synced.set()

    def _page(self, token: str) -> Mapping[str, Any]:
        kwargs = {**self._kwargs(), "limit": self.page_size}
        if token:
            kwargs["_continue"] = token
        resp = self.what.call(**kwargs, _request_timeout=(CONNECT_SECONDS, 120))
        try:
            body: Mapping[str, Any] = orjson.loads(resp.data)
        finally:
            resp.release_conn()
        self.pages += 1
        return body

    def _watch(self) -> None:
        resp = self.what.call(
            **self._kwargs(),
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _request_timeout=(CONNECT_SECONDS, self.watch_seconds + 30),
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self.stop.is_set():
                    return
                if line:
                    self._on_event(orjson.loads(line))
        finally:
            resp.release_conn()

    def _on_event(self, event: Mapping[str, Any]) -> None:
        type_, obj = event.get("type"), event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                self._log.info("resourceVersion expired; listing again", message=obj.get("message"))
                raise GoneError(obj.get("message"))
            raise WatchFailedError(f"watch error: {obj.get('code')} {obj.get('message')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if type_ in ("ADDED", "MODIFIED", "DELETED"):
            obj.setdefault("kind", self.what.kind)
            obj.setdefault("apiVersion", self.what.api_version)
            self.sink.event(self.what.kind, str(type_), obj)
        if rv:
            self.resource_version = str(rv)
