"""Small HTTP servers on one asyncio thread: healthz, metrics, healthCheckNodePorts.

kube-proxy opens one server per ``externalTrafficPolicy: Local`` Service; with a
thread each that would be hundreds of threads. Here every listener lives on one
event loop in one thread, opened and closed from the sync loop's thread. The
protocol is the little the callers need: a GET (or HEAD), one response,
``Connection: close``.

Every listener is reachable by strangers (healthz on the node's addresses,
healthCheckNodePorts through load balancers), so a client is bounded: its
request line and headers must arrive within ``HEADER_SECONDS`` and
``MAX_HEADER_BYTES``, and a listener holds at most ``MAX_CONNECTIONS``; one more
closes the oldest (a client that has sent its request is answered at once, so the
oldest is the one that has sent least). An accept that fails (out of file
descriptors) is logged at most once a second, without a traceback. A wildcard
address (``0.0.0.0``, ``::``) listens on both families, as Go's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nftproxy import log

T = TypeVar("T")

HEADER_SECONDS = 5.0
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 256
"""Per listener; the process's descriptors are shared by every listener and the proxy."""
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Response:
    """An HTTP response."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str], Response]
"""Maps a request path to a response; called on the server thread."""

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _encode(resp: Response, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}"]
    headers = {"Content-Length": str(len(resp.body)), "Connection": "close", **resp.headers}
    lines += [f"{k}: {v}" for k, v in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + resp.body


class HttpServers:
    """Listeners on one event loop thread; a context manager."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_Quiet().handle)
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self.max_connections = max_connections
        self.evicted = 0
        """Connections closed to make room for a new one (for tests and metrics)."""

    def __enter__(self) -> HttpServers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    def listen(self, host: str, port: int, handler: Handler) -> int:
        """Serve handler on host:port (0: any free port); returns the port.

        Raises OSError when the address cannot be bound."""

        held: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held[writer] = None
            while len(held) > self.max_connections:
                oldest = next(iter(held))
                del held[oldest]
                oldest.transport.abort()
                self.evicted += 1
            try:
                await _serve_one(reader, writer, handler)
            finally:
                held.pop(writer, None)

        async def start() -> int:
            if host in WILDCARDS:
                sock = dual_stack_socket(port)
                server = await asyncio.start_server(client, sock=sock, limit=MAX_HEADER_BYTES)
            else:
                server = await asyncio.start_server(
                    client, host, port, reuse_address=True, limit=MAX_HEADER_BYTES
                )
            bound = int(server.sockets[0].getsockname()[1])
            self._servers[(host, bound)] = server
            return bound

        return self._call(start())

    def close(self, host: str, port: int) -> None:
        """Stop serving host:port (nothing when it is not served)."""

        async def stop() -> None:
            server = self._servers.pop((host, port), None)
            if server is not None:
                server.close()
                await server.wait_closed()

        self._call(stop())

    def listening(self) -> set[tuple[str, int]]:
        """The addresses served now."""
        return set(self._servers)

    def close_all(self) -> None:
        """Close every listener and stop the thread."""
        if not self._thread.is_alive():
            return
        for host, port in list(self._servers):
            with contextlib.suppress(Exception):
                self.close(host, port)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_SECONDS)
        request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        method, path = ([*request, "", ""])[:2]
        if method not in ("GET", "HEAD"):
            resp = Response(405, b"method not allowed\n")
        else:
            resp = handler(path.split("?", 1)[0])
        writer.write(_encode(resp, method == "HEAD"))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
        pass  # a client that sent too little, too much or too late: closed
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def dual_stack_socket(port: int) -> socket.socket:
    """A listening socket on every address of both families (``::`` taking IPv4 too,
    as Go listens on ``0.0.0.0``); IPv4 alone where the kernel has no IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:  # IPv6 disabled on this node
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address: tuple[str, int] = ("0.0.0.0", port)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Quiet:
    """The event loop's exception handler: what the servers cannot help (an accept
    that fails for want of descriptors, a client gone) is logged at most once a
    second, as one structured line."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.last = -every
        self.dropped = 0

    def handle(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.dropped += 1
            return
        err = context.get("exception")
        log.logger().warning(
            "http server error",
            message=context.get("message"),
            error=repr(err) if err else None,
            suppressed=self.dropped,
        )
        self.last, self.dropped = now, 0
