"""An in-process Kubernetes API server for list and watch: the lab's and the tests'.

It speaks the API's wire format for the resources nftproxy reads (Services,
EndpointSlices, Pods, Nodes, ServiceCIDRs): JSON lists carrying
``metadata.resourceVersion``, watch streams (chunked, one JSON event per line:
ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), label and field selectors, and
the failures a real one shows: ``410 Gone`` for a resourceVersion older than
its history (as an ERROR event in the stream, as the API server sends it),
dropped watch connections, 5xx answers, and being away altogether.

Objects are changed through :class:`FakeAPIServer` (``apply``, ``delete``);
the real ``kubernetes`` client is pointed at :attr:`FakeAPIServer.url`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Resource:
    """One API resource: where it lives and what its objects are called."""

    prefix: str
    plural: str
    kind: str
    api_version: str
    namespaced: bool = True


RESOURCES = {
    r.plural: r
    for r in (
        Resource("/api/v1", "services", "Service", "v1"),
        Resource(
            "/apis/discovery.k8s.io/v1", "endpointslices", "EndpointSlice", "discovery.k8s.io/v1"
        ),
        Resource("/api/v1", "pods", "Pod", "v1"),
        Resource("/api/v1", "nodes", "Node", "v1", namespaced=False),
        Resource(
            "/apis/networking.k8s.io/v1",
            "servicecidrs",
            "ServiceCIDR",
            "networking.k8s.io/v1",
            namespaced=False,
        ),
    )
}
KIND_PLURAL = {r.kind: r.plural for r in RESOURCES.values()}
GARBLED = b'{"metadata":]}'
"""The end of a garbled list body: an item that is not JSON."""


@dataclass(frozen=True)
class Event:
    """A change as the history keeps it: the object before and after."""

    rv: int
    plural: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None


def matches_labels(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy a label selector (``k``, ``!k``, ``k=v``, ``k!=v``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if term.startswith("!"):
            ok = term[1:] not in labels
        elif "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.split("=", 1)
            ok = labels.get(key.rstrip("=")) == value
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def matches_fields(selector: str, obj: Mapping[str, Any]) -> bool:
    """Whether an object satisfies a field selector (``path=value``, ``path!=value``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            path, value = term.split("!=", 1)
            if _field(obj, path) == value:
                return False
        else:
            path, value = term.split("=", 1)
            if _field(obj, path.rstrip("=")) != value:
                return False
    return True


@dataclass(frozen=True)
class Query:
    """What a list or watch asks for."""

    plural: str
    labels: str = ""
    fields: str = ""

    def wants(self, obj: Mapping[str, Any] | None) -> bool:
        """Whether the object (None: absent) is in this query's view."""
        if obj is None:
            return False
        labels = obj.get("metadata", {}).get("labels") or {}
        return matches_labels(self.labels, labels) and matches_fields(self.fields, obj)

    def event(self, ev: Event) -> tuple[str, Mapping[str, Any]] | None:
        """The watch event this query sees for a change (an object leaving the
        selection is DELETED, one entering it ADDED), or None."""
        if ev.plural != self.plural:
            return None
        was, now = self.wants(ev.old), self.wants(ev.new)
        if was and now and ev.new is not None:
            return "MODIFIED", ev.new
        if now and ev.new is not None:
            return "ADDED", ev.new
        if was and ev.old is not None:
            gone = copy.deepcopy(dict(ev.old))
            gone["metadata"]["resourceVersion"] = str(ev.rv)
            return "DELETED", gone
        return None


class Store:
    """Objects, a resourceVersion counter and a bounded history of changes."""

    def __init__(self, history: int = 10_000) -> None:
        self.cond = threading.Condition()
        self.rv = 1
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: deque[Event] = deque(maxlen=history)
        self.oldest = 1
        """The oldest resourceVersion a watch may start from."""
        self._uids = itertools.count(1)

    def _key(self, obj: Mapping[str, Any]) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return KIND_PLURAL[obj["kind"]], meta.get("namespace", ""), meta["name"]

    def _record(self, ev: Event) -> None:
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0].rv
        self.history.append(ev)
        self.cond.notify_all()

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object; returns it as stored."""
        new = copy.deepcopy(dict(obj))
        with self.cond:
            key = self._key(new)
            old = self.objects.get(key)
            self.rv += 1
            meta = new.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.rv)
            meta["uid"] = old["metadata"]["uid"] if old else f"uid-{next(self._uids)}"
            self.objects[key] = new
            self._record(Event(self.rv, key[0], old, new))
            return new

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object; False when there was none."""
        with self.cond:
            key = (KIND_PLURAL[kind], namespace, name)
            old = self.objects.pop(key, None)
            if old is None:
                return False
            self.rv += 1
            self._record(Event(self.rv, key[0], old, None))
            return True

    def compact(self) -> None:
        """Forget the history: every watch from an older resourceVersion gets 410."""
        with self.cond:
            self.history.clear()
            self.oldest = self.rv
            self.cond.notify_all()

    def listing(self, query: Query) -> tuple[list[dict[str, Any]], int]:
        """The objects a query selects, and the resourceVersion of the list."""
        with self.cond:
            items = [
                o
                for (p, _, _), o in sorted(self.objects.items(), key=lambda kv: kv[0])
                if p == query.plural and query.wants(o)
            ]
            # A copy (the handler may page it while the store changes), through
            # JSON: a tenth of deepcopy's time, which at 10,000 slices was ~0.4 s.
            return orjson.loads(orjson.dumps(items)), self.rv

    def since(self, rv: int) -> list[Event] | None:
        """The changes after rv, or None when rv is older than the history (410)."""
        if rv < self.oldest:
            return None
        newer: list[Event] = []
        for e in reversed(self.history):  # newest first: O(changes), not O(history)
            if e.rv <= rv:
                break
            newer.append(e)
        newer.reverse()
        return newer


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the server's counters instead."""

    def do_GET(self) -> None:
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        line = f"GET {url.path}{'?watch' if _true(params.get('watch')) else ''}"
        api.requests.append(line)
        api.timed.append((time.monotonic(), line))
        if not self._authorized():
            return
        failing = api.take_failure()
        if failing:
            self._json(failing, _status(failing, "InternalError", "injected failure"))
            return
        query = _route(url.path, params, api.served)
        if query is None:
            self._json(404, _status(404, "NotFound", f"the server could not find {url.path}"))
            return
        if _true(params.get("watch")):
            try:
                self._watch(query, params)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away
        else:
            self._list(query, params)

    def do_POST(self) -> None:
        """Create an Event (events.k8s.io/v1): the only object the proxy writes."""
        self._write(create=True)

    def do_PATCH(self) -> None:
        """Patch an Event (a merge of the body into it, as a strategic merge of an
        Event's plain fields is)."""
        self._write(create=False)

    def _write(self, *, create: bool) -> None:
        api = self.server.api
        path = urllib.parse.urlsplit(self.path).path
        api.requests.append(f"{self.command} {path}")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = orjson.loads(self.rfile.read(length))
        except orjson.JSONDecodeError:
            self._json(400, _status(400, "BadRequest", "not JSON"))
            return
        if not self._authorized():
            return
        match = EVENTS_PATH.fullmatch(path)
        if match is None or not isinstance(body, dict):
            self._json(404, _status(404, "NotFound", f"the server could not find {path}"))
            return
        namespace, name = match.group(1), match.group(2) or body.get("metadata", {}).get("name")
        code, stored = api.write_event(namespace, str(name), body, create=create)
        self._json(code, stored)

    def _authorized(self) -> bool:
        api = self.server.api
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if api.token is not None and (scheme.lower() != "bearer" or token != api.token):
            api.unauthorized += 1
            self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def _json(self, code: int, body: Mapping[str, Any], broken: str = "") -> None:
        """body as JSON; broken: "garbled" (the last item's end replaced by garbage)
        or "cut" (the connection closed half-way)."""
        data = orjson.dumps(body)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if broken == "garbled":
            data = data[: -len(GARBLED)] + GARBLED
        elif broken == "cut":
            data = data[: len(data) // 2]
            self.close_connection = True
        self.wfile.write(data)

    def _list(self, query: Query, params: Mapping[str, str]) -> None:
        """A list, or one page of it with ``limit`` (``continue`` names the next)."""
        res = RESOURCES[query.plural]
        api = self.server.api
        token = params.get("continue", "")
        if token:
            held = api.continues.pop(token, None)
            if api.take_expiry():
                held = None
            if held is None:
                message = "The provided continue parameter is too old to display a consistent list"
                self._json(410, _status(410, "Expired", message))
                return
            items, rv = held
        else:
            items, rv = api.store.listing(query)
        limit = int(params.get("limit") or 0)
        if params.get("resourceVersion") == "0" and api.watch_cache and not token:
            limit = 0  # from the watch cache: any version, all at once
        page, rest = (items[:limit], items[limit:]) if limit > 0 else (items, [])
        broken = api.take_broken_list()
        if broken == "no-metadata":
            self._json(200, {"kind": res.kind + "List", "items": page})
            return
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if rest:
            meta["continue"] = api.hold_continue(rest, rv)
            meta["remainingItemCount"] = len(rest)
        body = {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta}
        self._json(200, {**body, "items": page}, broken)

    def _break(self) -> None:
        """Close the connection without the terminating chunk, as a broken one."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _chunk(self, event: Mapping[str, Any]) -> None:
        self._raw_chunk(orjson.dumps(event))

    def _raw_chunk(self, line: bytes) -> None:
        data = line + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, query: Query, params: Mapping[str, str]) -> None:
        api = self.server.api
        store = api.store
        rv = int(params.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or 1800)
        bookmarks = _true(params.get("allowWatchBookmarks"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        generation = api.generation
        with api.watching():
            if rv == 0:  # "any": start from now, as a fresh watch without a version
                rv = store.rv
            last_bookmark = time.monotonic()
            while True:
                with store.cond:
                    events = store.since(rv)
                    if events == [] and api.generation == generation:
                        store.cond.wait(timeout=min(api.bookmark_every, 0.5))
                        events = store.since(rv)
                    current = store.rv
                if api.generation != generation:
                    self._break()
                    return
                if events is None:
                    gone = _status(
                        410, "Expired", f"too old resource version: {rv} ({store.oldest})"
                    )
                    self._chunk({"type": "ERROR", "object": gone})
                    break
                for ev in events:
                    seen = query.event(ev)
                    if seen is not None:
                        self._chunk({"type": seen[0], "object": seen[1]})
                    rv = ev.rv
                for raw in api.take_raw(query.plural):
                    self._raw_chunk(raw)
                now = time.monotonic()
                if bookmarks and now - last_bookmark >= api.bookmark_every:
                    res = RESOURCES[query.plural]
                    mark = {
                        "kind": res.kind,
                        "apiVersion": res.api_version,
                        "metadata": {"resourceVersion": str(max(rv, current))},
                    }
                    self._chunk({"type": "BOOKMARK", "object": mark})
                    rv = max(rv, current)
                    last_bookmark = now
                if now >= deadline:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


def _true(value: str | None) -> bool:
    return value in ("1", "true", "True")


def _route(path: str, params: Mapping[str, str], served: Mapping[str, Resource]) -> Query | None:
    """The query a request path asks for: ``PREFIX/PLURAL``,
    ``PREFIX/namespaces/NS/PLURAL`` or ``PREFIX/PLURAL/NAME`` (cluster-wide)."""
    for res in served.values():
        if not path.startswith(res.prefix + "/"):
            continue
        rest = path[len(res.prefix) + 1 :].split("/")
        fields = params.get("fieldSelector", "")
        if rest == [res.plural]:
            return Query(res.plural, params.get("labelSelector", ""), fields)
        if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == res.plural:
            fields = ",".join(filter(None, (fields, f"metadata.namespace={rest[1]}")))
            return Query(res.plural, params.get("labelSelector", ""), fields)
    return None


EVENTS_PATH = re.compile(r"/apis/events\.k8s\.io/v1/namespaces/([^/]+)/events(?:/([^/]+))?")


def _merged(into: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merged(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: FakeAPIServer) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-request is no error of the server's (quiet);
        anything else is printed, as socketserver does."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FakeAPIServer:
    """A list/watch API server on 127.0.0.1; a context manager.

    ``without`` names resources it does not serve (404), as an older server
    without ServiceCIDRs.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        history: int = 10_000,
        without: tuple[str, ...] = ("servicecidrs",),
        tls: tuple[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.tls = tls
        """A certificate file and its key: serve HTTPS (as a real API server)."""
        self.token = token
        """The bearer token every request must carry (401 otherwise); None: any."""
        self.unauthorized = 0
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        """Events written (events.k8s.io/v1), by namespace and name."""
        self.event_writes: list[str] = []
        """POST or PATCH, one per write, in order."""
        self.store = Store(history)
        self.bookmark_every = 1.0
        self.generation = 0
        self.requests: deque[str] = deque(maxlen=10_000)
        self.timed: deque[tuple[float, str]] = deque(maxlen=100_000)
        """The same requests with when they came (monotonic), for the benchmarks."""
        self.active_watches = 0
        self.continues: dict[str, tuple[list[dict[str, Any]], int]] = {}
        """The rest of each paged list, by continue token (a snapshot, as etcd's)."""
        self.watch_cache = True
        """A list at ``resourceVersion=0`` comes whole, whatever its limit, as the
        real server's watch cache serves it; False: paged like any other."""
        self._tokens = itertools.count(1)
        self._expiries = 0
        self._failures: deque[int] = deque()
        self._raw: dict[str, list[bytes]] = {}
        self._broken_lists: list[str] = []
        self._lock = threading.Lock()
        self.served = {k: v for k, v in RESOURCES.items() if k not in without}
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def write_event(
        self, namespace: str, name: str, body: Mapping[str, Any], *, create: bool
    ) -> tuple[int, dict[str, Any]]:
        """Store a created Event (409 when the name is taken) or patch one (404 when
        absent); the status code and the Event as stored."""
        with self._lock:
            key = (namespace, name)
            self.event_writes.append("POST" if create else "PATCH")
            if create == (key in self.events):
                code = 409 if create else 404
                return code, _status(code, "AlreadyExists" if create else "NotFound", name)
            event = self.events.get(key) or {}
            self.events[key] = _merged(event, body)
            return (201 if create else 200), self.events[key]

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """The port it listens on (chosen at the first start when 0 was given)."""
        return self._port

    def __enter__(self) -> FakeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`)."""
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            # The handshake in the handler's thread, not in the accepting one.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-apiserver", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop every watch: the API server is away."""
        server, self._server = self._server, None
        if server is None:
            return
        self.drop_watches()
        server.shutdown()
        server.server_close()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count a watch stream while it is open."""
        with self._lock:
            self.active_watches += 1
        try:
            yield
        finally:
            with self._lock:
                self.active_watches -= 1

    def hold_continue(self, rest: list[dict[str, Any]], rv: int) -> str:
        """Keep the rest of a paged list; the token that asks for it."""
        token = f"continue-{next(self._tokens)}"
        self.continues[token] = (rest, rv)
        return token

    def expire_next_continues(self, count: int) -> None:
        """The next ``count`` requests for a list's next page get 410 Expired (the
        snapshot compacted away meanwhile)."""
        with self._lock:
            self._expiries += count

    def take_expiry(self) -> bool:
        """Whether this next-page request must find its snapshot expired."""
        with self._lock:
            if self._expiries:
                self._expiries -= 1
                return True
            return False

    def drop_watches(self) -> None:
        """End every open watch stream abruptly, as a broken connection."""
        with self.store.cond:
            self.generation += 1
            self.store.cond.notify_all()

    def fail_next(self, count: int, code: int = 500) -> None:
        """Answer the next ``count`` requests with ``code``."""
        with self._lock:
            self._failures.extend([code] * count)

    def take_failure(self) -> int:
        """The status the next request must fail with, or 0."""
        with self._lock:
            return self._failures.popleft() if self._failures else 0

    def send_raw(self, plural: str, line: bytes) -> None:
        """The next watch stream of plural (an open one, or the next opened) carries
        line as it is, a chunk of its own: what a client does with garbage."""
        with self._lock:
            self._raw.setdefault(plural, []).append(line)

    def take_raw(self, plural: str) -> list[bytes]:
        """The raw lines waiting for a watch of plural."""
        with self._lock:
            return self._raw.pop(plural, [])

    def break_next_lists(self, count: int, how: str = "no-metadata") -> None:
        """The next ``count`` lists answer a broken body: without ``metadata``;
        "garbled" (its end is not JSON); "cut" (the connection closes half-way)."""
        with self._lock:
            self._broken_lists += [how] * count

    def take_broken_list(self) -> str:
        """How this list must be broken ("": not)."""
        with self._lock:
            return self._broken_lists.pop(0) if self._broken_lists else ""

    def serves(self, plural: str) -> bool:
        """Whether this server knows the resource."""
        return plural in self.served

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an object (its ``kind`` says which resource)."""
        return self.store.apply(obj)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object."""
        return self.store.delete(kind, namespace, name)
