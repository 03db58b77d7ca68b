"""/healthz, /livez and the healthCheckNodePort servers, with kube-proxy's semantics.

The proxy is unhealthy when a change was queued and not applied within the
health timeout (2 x syncPeriod). /healthz is also unhealthy until the first sync
(as kube-proxy's), while a watched resource has been failing for longer than
the timeout (``in_sync`` checks), and while the Node is being deleted or tainted
``ToBeDeletedByClusterAutoscaler`` (load balancers drain it). /livez ignores all
three: a proxy waiting for its API server is alive, and restarting it would not
bring the server back. A healthCheckNodePort answers 200 when this
node has ready local endpoints for its Service and the proxy is healthy, else 503.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import orjson

from nftproxy import log
from nftproxy.controller.serve.http import HttpServers, Response
from nftproxy.controller.serve.metrics import Metrics

ServiceName = tuple[str, str]


def go_time(seconds: float | None) -> str:
    """A time as Go's ``time.Time.String()`` prints it (kube-proxy's body uses it)."""
    if seconds is None:
        return "0001-01-01 00:00:00 +0000 UTC"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


class ProxyHealth:
    """What /healthz and /livez report; updated by the sync loop and the Node."""

    def __init__(
        self, timeout: float, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_queued: float | None = None
        self.node_eligible = True
        self.in_sync: list[Callable[[float], bool]] = []
        """Checks that each watched resource has not been failing for longer than
        the bound given (the reflectors' ``in_sync``)."""

    def queued(self) -> None:
        """A change arrived that the kernel does not hold yet."""
        with self._lock:
            if self._oldest_queued is None:
                self._oldest_queued = self.clock()

    def updated(self) -> None:
        """A sync applied everything queued so far."""
        with self._lock:
            self._oldest_queued = None
            self._last_updated = self.clock()

    def healthy(self) -> bool:
        """The proxy's own health, ignoring the Node."""
        with self._lock:
            queued = self._oldest_queued
            return queued is None or self.clock() - queued < self.timeout

    def ready(self) -> bool:
        """What /healthz adds to :meth:`healthy`: a first sync, and every resource in sync."""
        with self._lock:
            synced = self._last_updated is not None
        return synced and all(check(self.timeout) for check in self.in_sync)

    def _answer(self, healthy: bool, counter: str, extra: bytes) -> Response:
        now = self.clock()
        last = now if healthy else self._last_updated
        code = 200 if healthy else 503
        getattr(self.metrics, counter).labels(code=str(code)).inc()
        body = b'{"lastUpdated": %s,"currentTime": %s%s}' % (
            orjson.dumps(go_time(last)),
            orjson.dumps(go_time(now)),
            extra,
        )
        return Response(
            code,
            body,
            {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"},
        )

    def healthz(self, path: str) -> Response:
        """GET /healthz (and /livez on the same server)."""
        if path == "/livez":
            return self._answer(self.healthy(), "livez", b"")
        if path != "/healthz":
            return Response(404, b"404 page not found\n")
        eligible = self.node_eligible
        flag = b', "nodeEligible": ' + (b"true" if eligible else b"false")
        return self._answer(self.healthy() and self.ready() and eligible, "healthz", flag)


class ServiceHealthServers:
    """One healthCheckNodePort listener per Service that has one, opened and
    closed as Services come and go; a port that cannot be bound is logged."""

    def __init__(self, servers: HttpServers, proxy: ProxyHealth, host: str = "") -> None:
        self.servers = servers
        self.proxy = proxy
        self.host = host
        self._ports: dict[ServiceName, int] = {}
        self._local: dict[ServiceName, int] = {}
        self.failed: dict[ServiceName, str] = {}
        self.on_bind_failure: Callable[[ServiceName, int, str], None] = lambda n, p, e: None
        """Called on every failed try to open a Service's port (an Event on it)."""

    def sync_services(self, wanted: Mapping[ServiceName, int]) -> None:
        """Open the ports of new Services, close those of Services gone or moved."""
        for name, port in list(self._ports.items()):
            if wanted.get(name) != port:
                self.servers.close(self.host, port)
                del self._ports[name]
        for name, port in wanted.items():
            if name in self._ports:
                continue
            try:
                self.servers.listen(self.host, port, self._handler(name))
            except OSError as err:
                if self.failed.get(name) != str(err):
                    log.logger().error(
                        "healthCheckNodePort cannot be opened",
                        service="/".join(name),
                        port=port,
                        error=str(err),
                    )
                self.failed[name] = str(err)
                self.on_bind_failure(name, port, str(err))
                continue
            self.failed.pop(name, None)
            self._ports[name] = port

    def sync_endpoints(self, local: Mapping[ServiceName, int]) -> None:
        """The number of ready local endpoints per Service."""
        self._local = dict(local)

    def ports(self) -> dict[ServiceName, int]:
        """The ports open now."""
        return dict(self._ports)

    def _handler(self, name: ServiceName) -> Callable[[str], Response]:
        def answer(_path: str) -> Response:
            count = self._local.get(name, 0)
            healthy = self.proxy.healthy()
            body = orjson.dumps(
                {
                    "service": {"namespace": name[0], "name": name[1]},
                    "localEndpoints": count,
                    "serviceProxyHealthy": healthy,
                },
                option=orjson.OPT_INDENT_2,
            )
            headers = {
                "Content-Type": "application/json",
                "X-Content-Type-Options": "nosniff",
                "X-Load-Balancing-Endpoint-Weight": str(count),
            }
            return Response(200 if count and healthy else 503, body, headers)

        return answer
