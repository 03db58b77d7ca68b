"""Prometheus metrics: kube-proxy's names where the meaning is the same, nftproxy's own
under ``nftproxy_``. One registry per proxy (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from nftproxy.k8s.restmetrics import RestMetrics

# kube-proxy's buckets for sync durations (exponential from 1 ms).
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
PROGRAMMING_BUCKETS = (
    *(0.25 * i for i in range(1, 5)),
    *(1.0 * i for i in range(2, 16)),
    *(30.0 * i for i in range(1, 11)),
)


class Metrics:
    """Every metric the proxy exports."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # kube-proxy has no *_created
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_*: memory, CPU, fds, start time
        self.rest = RestMetrics(r)
        """client-go's rest_client_* series (the API client's transport)."""
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.full_sync_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.partial_sync_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds (from the change's "
            "last-change-trigger-time, else its arrival on the watch, to the kernel "
            "holding it)",
            buckets=PROGRAMMING_BUCKETS,
            registry=r,
        )
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            registry=r,
        )
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            registry=r,
        )
        self.endpoint_changes = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            registry=r,
        )
        self.service_changes = Counter(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            registry=r,
        )
        self.no_local_endpoints = Gauge(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            ["traffic_policy"],
            registry=r,
        )
        self.healthz = Counter(
            "kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status", ["code"], registry=r
        )
        self.livez = Counter(
            "kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status", ["code"], registry=r
        )
        self.sync_failures = Counter(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            registry=r,
        )
        self.cleanup_failures = Counter(
            "kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
            "Cumulative proxy conntrack cleanup failures",
            registry=r,
        )
        self.watch_errors = Counter(
            "nftproxy_watch_errors",
            "List and watch failures, by resource and reason (malformed lines included)",
            ["resource", "reason"],
            registry=r,
        )
        self.loop_errors = Counter(
            "nftproxy_loop_errors",
            "Failures the loop caught and retried, by step (sync, drift, servers)",
            ["step"],
            registry=r,
        )
        self.drift_repaired = Counter(
            "nftproxy_drift_repaired",
            "Differences between the kernel and what was applied, found and repaired",
            registry=r,
        )
        self.elements = Gauge(
            "nftproxy_elements_programmed", "Set and map elements in nftproxy's tables", registry=r
        )
        self.chains = Gauge("nftproxy_chains_programmed", "Chains in nftproxy's tables", registry=r)
        self.conntrack_deleted = Counter(
            "nftproxy_conntrack_entries_deleted",
            "Stale UDP/SCTP conntrack entries deleted",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
