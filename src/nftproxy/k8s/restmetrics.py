"""client-go's ``rest_client_*`` metrics for the ``kubernetes`` client's requests.

kube-proxy exports what client-go measures of every request it makes; dashboards
(kubernetes-mixin's "Kubernetes / Proxy") and Metricbeat read them. The hook is the
client's transport: its urllib3 pool manager is wrapped (:func:`instrument`), so
every request the proxy makes is counted, whichever call made it: lists, watches,
Event posts. Names, labels and buckets are client-go's
(k8s.io/component-base/metrics/prometheus/restclient); the latency histogram
carries both the ``host`` label of today's client-go and the ``url`` label (the
URL without its query, namespaces templated) that older dashboards group by.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
SIZE_BUCKETS = (64, 256, 512, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
ERROR_CODE = "<error>"
"""client-go's code for a request that got no HTTP response."""

_NAMESPACED = re.compile(r"/namespaces/[^/]+/")


class RestMetrics:
    """The four series, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"],
            registry=registry,
        )
        self.latency = Histogram(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host (and URL).",
            ["verb", "host", "url"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_size = Histogram(
            "rest_client_request_size_bytes",
            "Request size in bytes. Broken down by verb and host.",
            ["verb", "host"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.response_size = Histogram(
            "rest_client_response_size_bytes",
            "Response size in bytes. Broken down by verb and host.",
            ["verb", "host"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )

    def observe(
        self, method: str, url: str, *, seconds: float, code: str, sent: int, received: int | None
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        host = parts.netloc
        self.requests.labels(code=code, method=method, host=host).inc()
        self.latency.labels(verb=method, host=host, url=url_template(url)).observe(seconds)
        self.request_size.labels(verb=method, host=host).observe(sent)
        if received is not None:
            self.response_size.labels(verb=method, host=host).observe(received)


def url_template(url: str) -> str:
    """The URL as client-go labels it: no query, the namespace templated."""
    parts = urllib.parse.urlsplit(url)
    path = _NAMESPACED.sub("/namespaces/{namespace}/", parts.path)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class MeteredPool:
    """A urllib3 pool manager that measures each request, then is the one it wraps."""

    def __init__(self, pool: Any, metrics: RestMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        body = kwargs.get("body")
        sent = len(body) if isinstance(body, (str, bytes)) else 0
        try:
            response = self._pool.request(method, url, *args, **kwargs)
        except Exception:
            seconds = time.perf_counter() - start
            self._metrics.observe(
                method, url, seconds=seconds, code=ERROR_CODE, sent=sent, received=None
            )
            raise
        length = response.headers.get("Content-Length")
        received = int(length) if length and length.isdigit() else None
        seconds = time.perf_counter() - start
        code = str(response.status)
        self._metrics.observe(method, url, seconds=seconds, code=code, sent=sent, received=received)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def instrument(api: Any, metrics: RestMetrics) -> None:
    """Measure every request an ApiClient makes, at its transport."""
    rest = api.rest_client
    rest.pool_manager = MeteredPool(rest.pool_manager, metrics)
