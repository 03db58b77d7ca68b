"""Small HTTP servers on one asyncio thread: healthz, metrics, healthCheckNodePorts.

kube-proxy opens one server per ``externalTrafficPolicy: Local`` Service; with a
thread each that would be hundreds of threads. Here every listener lives on one
event loop in one thread, opened and closed from the sync loop's thread. The
protocol is the little the callers need: a GET (or HEAD), one response,
``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16_384


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

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._servers: dict[tuple[str, int], asyncio.Server] = {}

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

        async def start() -> int:
            async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await _serve_one(reader, writer, handler)

            server = await asyncio.start_server(client, host or None, port, reuse_address=True)
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
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        request = head[:MAX_HEADER_BYTES].split(b"\r\n", 1)[0].decode("latin-1").split()
        method, path = ([*request, "", ""])[:2]
        if method not in ("GET", "HEAD"):
            resp = Response(405, b"method not allowed\n")
        else:
            resp = handler(path.split("?", 1)[0])
        writer.write(_encode(resp, method == "HEAD"))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
