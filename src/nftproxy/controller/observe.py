"""What the loop's syncs tell the world: the healthCheckNodePort servers and their
local endpoint counts, ``/healthz``, the metrics, and one ``synced`` log line per
sync. The loop decides and applies; this only reports."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from nftproxy import log
from nftproxy.controller.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.controller.serve.metrics import Metrics
from nftproxy.k8s.cache import Changes, ObjectKey, Snapshot
from nftproxy.k8s.events import EventRecorder, Regarding
from nftproxy.k8s.objects import Service
from nftproxy.nft.kernel import NftError
from nftproxy.nft.model import Ruleset
from nftproxy.proxy.state import ProxyState
from nftproxy.sync.after import AfterSync
from nftproxy.sync.apply import SyncResult


def health_check_ports(
    snap: Snapshot, node_name: str
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """healthCheckNodePort per Local-policy LoadBalancer Service, and the number of
    ready endpoints on this node for each."""
    ports: dict[tuple[str, str], int] = {}
    local: dict[tuple[str, str], int] = {}
    for _, obj in snap.objects:
        if isinstance(obj, Service) and obj.health_check_node_port and obj.external_local:
            key = (obj.namespace, obj.name)
            ports[key] = obj.health_check_node_port
            ready = {
                ep.addr
                for sl in snap.slices.get(key, [])
                for ep in sl.endpoints
                if ep.ready and ep.node_name == node_name
            }
            local[key] = len(ready)
    return ports, local


PERSISTENT_FAILURES = 3
"""Failed syncs in a row from which the Node gets an Event."""


@dataclass(frozen=True)
class Done:
    """A successful sync: what it was computed from and what it did."""

    snap: Snapshot
    """Everything held (a full sync), or what changed (a partial one)."""
    state: ProxyState
    """The state of what ``snap`` holds."""
    desired: Ruleset
    """The tables the sync planned to: whole, or limited to what changed."""
    result: SyncResult
    changes: Changes
    partial: bool
    triggers: tuple[float, ...] = ()
    """When each change it applied was triggered (wall clock; the loop carries
    them over failed syncs)."""


class Observer:
    """Health, metrics and logs of one loop's syncs."""

    def __init__(
        self,
        node_name: str,
        metrics: Metrics,
        health: ProxyHealth,
        services: ServiceHealthServers | None,
    ) -> None:
        self.node_name = node_name
        self.metrics = metrics
        self.health = health
        self.services = services
        self.events: EventRecorder | None = None
        """Where Warning Events go (None: nowhere, as in shadow mode)."""
        self.health_ports: dict[ObjectKey, int] = {}
        self.local_counts: dict[ObjectKey, int] = {}
        self.no_local: dict[ObjectKey, tuple[bool, bool]] = {}
        """Services without local endpoints: (internal policy Local, external Local)."""
        self._log = log.logger()

    def queued(self) -> None:
        """A change arrived."""
        self.health.queued()
        self.metrics.last_queued.set_to_current_time()

    def forget(self, keys: Iterable[ObjectKey] | None = None) -> None:
        """What is known of these Services (all with None) goes: a sync recounts them."""
        for table in (self.health_ports, self.local_counts, self.no_local):
            if keys is None:
                table.clear()
            else:
                for key in keys:
                    table.pop(key, None)

    def failed(self, err: Exception, in_row: int = 1) -> None:
        """A sync that failed: the kernel refused it, or something else went wrong;
        from the third in a row on, a Warning Event on the Node too."""
        self.metrics.sync_failures.inc()
        if not isinstance(err, NftError):
            self.metrics.loop_errors.labels(step="sync").inc()
        self._log.error(
            "sync failed; the next sync plans against a fresh read of the kernel",
            kind=type(err).__name__,
            error=str(err)[:500],
        )
        if self.events is not None and in_row >= PERSISTENT_FAILURES:
            node = Regarding("Node", "v1", self.node_name)
            # The same words each time, so that repeats fold into one Event series.
            note = f"syncs keep failing; the last: {type(err).__name__}: {err}"
            self.events.record(node, "SyncFailed", "Syncing", note)

    def error(self, step: str, err: Exception) -> None:
        """A step of the loop other than the sync failed; it is tried again later."""
        self.metrics.loop_errors.labels(step=step).inc()
        self._log.error(f"{step} failed", kind=type(err).__name__, error=str(err)[:500])

    def synced(self, done: Done, after: AfterSync, elements: int, chains: int) -> None:
        """A sync succeeded: servers, health, metrics, the log line."""
        self.count_services(done.snap, done.state)
        if done.snap.node is not None:
            self.health.node_eligible = done.snap.node.eligible
        self.health.updated()
        self.metrics.conntrack_deleted.inc(after.deleted)
        self.metrics.cleanup_failures.inc(len(after.failures))
        self._count(done, elements, chains)
        result = done.result
        self._log.info(
            "synced",
            full=result.full,
            partial=done.partial,
            seconds=round(result.seconds, 4),
            added=result.summary.added,
            changed=result.summary.changed,
            removed=result.summary.removed,
            services_changed=len(done.changes.services),
            conntrack_deleted=after.deleted,
            affinity_forgotten=after.forgotten,
            problems=len(done.state.problems),
        )

    def _count(self, done: Done, elements: int, chains: int) -> None:
        result, changes, m = done.result, done.changes, self.metrics
        (m.partial_sync_duration if done.partial else m.full_sync_duration).observe(result.seconds)
        m.sync_duration.observe(result.seconds)
        m.last_sync.set_to_current_time()
        m.endpoint_changes.inc(changes.endpoint_changes)
        m.service_changes.inc(changes.service_changes)
        now = time.time()
        for triggered in done.triggers:  # as kube-proxy: one observation per change
            m.programming.observe(max(now - triggered, 0.0))
        m.elements.set(elements)
        m.chains.set(chains)

    def count_services(self, snap: Snapshot, state: ProxyState) -> None:
        """What is known of the Services snap holds (all of them, or those a partial
        sync changed), merged in: their healthCheckNodePorts and servers, their
        endpoints on this node, and those with none here."""
        ports, local = health_check_ports(snap, self.node_name)
        self.health_ports.update(ports)
        self.local_counts.update(local)
        if self.services is not None:
            try:
                self.services.sync_services(self.health_ports)
                self.services.sync_endpoints(self.local_counts)
            except Exception as err:  # a server that did not close in time: next sync
                self.error("servers", err)
        for fs in state.families:
            for sp in fs.service_ports:
                if sp.owner == "Service" and sp.cluster_endpoints and not sp.local_endpoints:
                    key = (sp.name.namespace, sp.name.name)
                    was = self.no_local.get(key, (False, False))
                    self.no_local[key] = (was[0] or sp.internal_local, was[1] or sp.external_local)
        for i, policy in enumerate(("internal", "external")):
            count = sum(1 for flags in self.no_local.values() if flags[i])
            self.metrics.no_local_endpoints.labels(traffic_policy=policy).set(count)

    def drift(self, found: int) -> None:
        """A drift check found differences (each logged by the loop)."""
        self.metrics.drift_repaired.inc(found)
