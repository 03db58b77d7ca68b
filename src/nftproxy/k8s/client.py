"""The connection to the API server, and the resources ``nftproxy run`` watches."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nftproxy.k8s.reflector import Watched
from nftproxy.k8s.tokenfile import follow_token_file

HEADLESS_LABEL = "service.kubernetes.io/headless"


def api_client(*, master: str | None, kubeconfig: str | None) -> Any:
    """An ApiClient: ``--master`` alone (an unauthenticated URL, as kube-proxy's flag),
    else a kubeconfig file, else the in-cluster service account."""
    cfg = client.Configuration()
    # Only the loader needed is imported (see nftproxy.k8s: config's __init__ is not run).
    if kubeconfig:
        from kubernetes.config.kube_config import load_kube_config  # noqa: PLC0415

        load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        follow_token_file(cfg, kubeconfig)  # kubelet rotates it; the client reads it once
    elif not master:
        from kubernetes.config.incluster_config import load_incluster_config  # noqa: PLC0415

        load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    if master:
        cfg.host = master
    cfg.socket_options = keepalive_options()
    return client.ApiClient(cfg)


KEEPALIVE = (30, 15, 9)
"""client-go's TCP keepalive: idle 30 s, then a probe every 15 s, 9 of them."""


def keepalive_options() -> list[tuple[int, int, int]]:
    """Socket options for API connections: urllib3's (no Nagle) and TCP keepalive, so
    that a watch whose peer went away silently is noticed in about 2.5 minutes,
    not at its read timeout."""
    idle, interval, count = KEEPALIVE
    return [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count),
    ]


DEFAULT_QPS = 5.0
DEFAULT_BURST = 10


class RateLimiter:
    """A token bucket shared by the reflectors: ``clientConnection.qps`` and ``burst``,
    as client-go takes them: 0 means its default (5 and 10), a negative QPS no limit."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps or DEFAULT_QPS
        self.burst = max(burst or DEFAULT_BURST, 1)
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until a request may go."""
        if self.qps < 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            delay = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if delay:
            time.sleep(delay)


def limited(call: Callable[..., Any], limiter: RateLimiter) -> Callable[..., Any]:
    """call, after the limiter lets it go."""

    @functools.wraps(call)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        limiter.wait()
        return call(*args, **kwargs)

    return wrapped


QUERY = {
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}
"""The keyword arguments of the client's ``list_*`` methods the reflector passes,
and their query parameters."""


def collection(api: Any, path: str) -> Callable[..., Any]:
    """A ``list_*`` call of one collection (the same keyword arguments, the raw
    response), made as the generated method makes it but without its API class:
    importing ``CoreV1Api`` imports every core model (0.6 s of a start)."""

    def call(*, _preload_content: bool = False, _request_timeout: Any = None, **kw: Any) -> Any:
        assert not _preload_content, "the reflector reads the raw response"
        query = [(QUERY[k], str(v).lower() if isinstance(v, bool) else v) for k, v in kw.items()]
        return raw_get(api, path, query, _request_timeout)

    return call


def raw_get(api: Any, path: str, query: list[tuple[str, Any]], timeout: Any) -> Any:
    """GET path through the ApiClient (its auth, its pool): the urllib3 response,
    or ApiException for an answer that is not 2xx. Both client generations: 37
    serialises the request apart (``param_serialize``), 36 and before in
    ``call_api``."""
    headers = {"Accept": "application/json"}
    if not hasattr(api, "param_serialize"):
        return api.call_api(
            path,
            "GET",
            query_params=query,
            header_params=headers,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout,
        )
    method, url, sent, body, post = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params=headers,
        auth_settings=["BearerToken"],
    )
    answer = api.call_api(method, url, sent, body, post, _request_timeout=timeout)
    if not 200 <= answer.status <= 299:
        answer.read()
        raise ApiException.from_response(http_resp=answer, body=None, data=None)
    return answer.response


def watched(api: Any, node_name: str, *, host_ports: bool, limiter: RateLimiter) -> list[Watched]:
    """What ``run`` lists and watches, with kube-proxy's selectors: Services and
    EndpointSlices not headless (Services of another proxy are skipped when
    parsed), this node's Pods (for hostPorts), this Node, and ServiceCIDRs.

    Pods and ServiceCIDRs are optional: a server without ServiceCIDRs (before
    Kubernetes 1.33) answers 404, a role without Pods (kube-proxy's own
    ``system:node-proxier``) 403, and the proxy goes on without them. Nothing here
    talks to the server: the reflectors do, retrying while it is away."""
    out = [
        Watched(
            "Service",
            "v1",
            limited(collection(api, "/api/v1/services"), limiter),
            label_selector=f"!{HEADLESS_LABEL}",
        ),
        Watched(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            limited(collection(api, "/apis/discovery.k8s.io/v1/endpointslices"), limiter),
            label_selector=f"!{HEADLESS_LABEL}",
        ),
        Watched(
            "Node",
            "v1",
            limited(collection(api, "/api/v1/nodes"), limiter),
            field_selector=f"metadata.name={node_name}",
        ),
    ]
    if host_ports:
        out.append(
            Watched(
                "Pod",
                "v1",
                limited(collection(api, "/api/v1/pods"), limiter),
                field_selector=f"spec.nodeName={node_name}",
                optional=True,
            )
        )
    out.append(
        Watched(
            "ServiceCIDR",
            "networking.k8s.io/v1",
            limited(collection(api, "/apis/networking.k8s.io/v1/servicecidrs"), limiter),
            optional=True,
        )
    )
    return out


EVENT_TIMEOUT = (5.0, 10.0)
"""Connect and read timeouts of an Event's post, seconds."""


def event_writers(
    api: Any, limiter: RateLimiter
) -> tuple[Callable[[str, dict[str, Any]], None], Callable[[str, str, dict[str, Any]], None]]:
    """Create and patch Events (events.k8s.io/v1) through the client, each request
    let go by the limiter: what :class:`nftproxy.k8s.events.EventRecorder` calls."""
    events: Any = client.EventsV1Api(api)  # dict bodies, raw responses

    def create(namespace: str, body: dict[str, Any]) -> None:
        limiter.wait()
        _done(
            events.create_namespaced_event(
                namespace, body, _request_timeout=EVENT_TIMEOUT, _preload_content=False
            )
        )

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        limiter.wait()
        _done(
            events.patch_namespaced_event(
                name, namespace, body, _request_timeout=EVENT_TIMEOUT, _preload_content=False
            )
        )

    return create, patch


def _done(response: Any) -> None:
    """Read the answer (the connection goes back to the pool clean) and let it go."""
    try:
        response.read()
    finally:
        response.release_conn()
