"""The connection to the API server, and the resources ``nftproxy run`` watches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from nftproxy.k8s.reflector import Watched

HEADLESS_LABEL = "service.kubernetes.io/headless"


def api_client(*, master: str | None, kubeconfig: str | None) -> Any:
    """An ApiClient: ``--master`` alone (an unauthenticated URL, as kube-proxy's flag),
    else a kubeconfig file, else the in-cluster service account."""
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    elif not master:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    if master:
        cfg.host = master
    return client.ApiClient(cfg)


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

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        limiter.wait()
        return call(*args, **kwargs)

    return wrapped


def serves_service_cidrs(api: Any) -> bool:
    """Whether the server has networking.k8s.io/v1 ServiceCIDRs (Kubernetes 1.33+)."""
    try:
        lister: Callable[..., Any] = client.NetworkingV1Api(api).list_service_cidr
        lister(limit=1, _preload_content=False).release_conn()
    except ApiException as err:
        if err.status in (403, 404):
            return False
        raise
    return True


def watched(
    api: Any, node_name: str, *, host_ports: bool, service_cidrs: bool, limiter: RateLimiter
) -> list[Watched]:
    """What ``run`` lists and watches, with kube-proxy's selectors: Services and
    EndpointSlices not headless (Services of another proxy are skipped when
    parsed), this node's Pods (for hostPorts), this Node, and ServiceCIDRs."""
    core = client.CoreV1Api(api)
    out = [
        Watched(
            "Service",
            "v1",
            limited(core.list_service_for_all_namespaces, limiter),
            label_selector=f"!{HEADLESS_LABEL}",
        ),
        Watched(
            "EndpointSlice",
            "discovery.k8s.io/v1",
            limited(client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces, limiter),
            label_selector=f"!{HEADLESS_LABEL}",
        ),
        Watched(
            "Node",
            "v1",
            limited(core.list_node, limiter),
            field_selector=f"metadata.name={node_name}",
        ),
    ]
    if host_ports:
        out.append(
            Watched(
                "Pod",
                "v1",
                limited(core.list_pod_for_all_namespaces, limiter),
                field_selector=f"spec.nodeName={node_name}",
            )
        )
    if service_cidrs:
        out.append(
            Watched(
                "ServiceCIDR",
                "networking.k8s.io/v1",
                limited(client.NetworkingV1Api(api).list_service_cidr, limiter),
            )
        )
    return out
