"""The sync loop of ``nftproxy run``: the cache's changes in, the kernel in step.

One thread applies; the watch handlers only record (see :mod:`nftproxy.api.cache`).
Each sync computes the desired ruleset from every object held, plans it against
what was last applied (kept in memory: the kernel is not read back) and applies
the difference as one transaction. Syncs are at most one per ``min_sync``;
every ``sync_period`` one runs even without changes; after a failure the next
one replaces the tables whole. A drift check reads the kernel every
``drift_period`` and repairs what differs. After each successful sync, in this
order: healthCheckNodePort servers, healthz, conntrack cleanup.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from nftproxy import log
from nftproxy.api.cache import Cache, Changes, Snapshot
from nftproxy.build import build
from nftproxy.config import NodeConfig
from nftproxy.kernel import Kernel, NftError
from nftproxy.nft.model import Family, Ruleset, Table
from nftproxy.objects import Service
from nftproxy.pipeline import with_node
from nftproxy.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.serve.metrics import Metrics
from nftproxy.state import ProxyState, compute_state, serving_flows
from nftproxy.sync import SyncResult, desired_tables, drift, read_tables, stale_plan, sync


@dataclass(frozen=True)
class Timing:
    """How often the loop syncs and checks (seconds)."""

    min_sync: float = 1.0
    sync_period: float = 30.0
    drift_period: float = 60.0


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


@dataclass(frozen=True)
class Done:
    """A successful sync: what it was computed from and what it did."""

    snap: Snapshot
    state: ProxyState
    ruleset: Ruleset
    result: SyncResult
    changes: Changes
    first: float | None
    """When the oldest change it applied arrived (monotonic), if any did."""


class Loop:
    """Applies the cache's objects to the kernel; :meth:`run` is the main thread's."""

    def __init__(
        self,
        kernel: Kernel,
        cache: Cache,
        base: NodeConfig,
        *,
        timing: Timing,
        metrics: Metrics,
        health: ProxyHealth,
        services: ServiceHealthServers | None = None,
        detect_local: str = "ClusterCIDR",
        dry_run: bool = False,
        out: TextIO = sys.stdout,
    ) -> None:
        self.kernel = kernel
        self.cache = cache
        self.base = base
        self.timing = timing
        self.metrics = metrics
        self.health = health
        self.services = services
        self.detect_local = detect_local
        self.dry_run = dry_run
        self.out = out
        self.wake = threading.Event()
        self.idle = threading.Event()
        """Set while the loop waits (nothing being applied)."""
        self.last_sync_end = 0.0
        """When the last successful sync ended (monotonic)."""
        self.applied: dict[Family, Table | None] | None = None
        self.need_full = False
        self.repair = False
        self.syncs = 0
        self.failures = 0
        self.last_result: SyncResult | None = None
        self._first_change: float | None = None
        self._log = log.logger()

    def changed(self) -> None:
        """The cache's callback: something changed (any thread)."""
        if self._first_change is None:
            self._first_change = time.monotonic()
        self.health.queued()
        self.metrics.last_queued.set_to_current_time()
        self.wake.set()

    # -- the loop ---------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        ready: Callable[[], bool],
        after_first: Callable[[], None] = lambda: None,
    ) -> None:
        """Sync until stop is set; the first sync waits until ``ready()``;
        ``after_first`` runs once after the first successful sync."""
        while not ready():
            if stop.wait(0.05):
                return
        last_start = -1e9
        next_period = next_drift = 0.0
        while not stop.is_set():
            now = time.monotonic()
            due = self.cache.pending() or self.need_full or self.repair or now >= next_period
            if due and now - last_start >= self.timing.min_sync:
                last_start = now
                if self.sync_once() and self.syncs == 1:
                    after_first()
                next_period = time.monotonic() + self.timing.sync_period
                continue
            if now >= next_drift and self.applied is not None:
                next_drift = now + self.timing.drift_period
                self.check_drift()
                continue
            wait = min(next_period, next_drift) - now
            if due:
                wait = min(wait, last_start + self.timing.min_sync - now)
            self.idle.set()
            self.wake.wait(max(wait, 0.0))
            self.idle.clear()
            self.wake.clear()

    def sync_once(self) -> bool:
        """One sync of everything the cache holds; False when the kernel refused it."""
        self.wake.clear()
        first, self._first_change = self._first_change, None
        snap, changes = self.cache.take()
        node = with_node(self.base, snap.node, snap.cidrs, self.detect_local)
        state = compute_state(snap.objects, node)
        ruleset = build(state)
        if self.applied is None:
            self.applied = read_tables(self.kernel)
        full = self.need_full
        try:
            result = sync(
                self.kernel, ruleset, full=full, dry_run=self.dry_run, read_already=self.applied
            )
        except NftError as err:
            self._failed(err, changes, first)
            return False
        self.applied = desired_tables(ruleset)
        self.need_full = self.repair = False
        self.syncs += 1
        self.last_result = result
        self.last_sync_end = time.monotonic()
        if self.dry_run:
            self.out.write(result.script)
            self.out.flush()
        self._after(Done(snap, state, ruleset, result, changes, first))
        return True

    def _failed(self, err: NftError, changes: Changes, first: float | None) -> None:
        self.failures += 1
        self.metrics.sync_failures.inc()
        self.need_full = True  # the next one replaces the tables whole
        if first is not None and self._first_change is None:
            self._first_change = first
        self._log.error("sync failed; the next sync replaces the tables whole", error=str(err))
        del changes  # folded into the next full sync, which recomputes everything

    def _after(self, done: Done) -> None:
        snap, state, result, changes = done.snap, done.state, done.result, done.changes
        if self.services is not None:
            ports, local = health_check_ports(snap, self.base.name)
            self.services.sync_services(ports)
            self.services.sync_endpoints(local)
        if snap.node is not None:
            self.health.node_eligible = snap.node.eligible
        self.health.updated()
        deleted = 0 if self.dry_run else self._delete_stale_flows(result, done.ruleset, state)
        self._count(done)
        self._log.info(
            "synced",
            full=result.full,
            seconds=round(result.seconds, 4),
            added=result.summary.added,
            changed=result.summary.changed,
            removed=result.summary.removed,
            services_changed=len(changes.services),
            conntrack_deleted=deleted,
            problems=len(state.problems),
        )

    def _delete_stale_flows(self, result: SyncResult, ruleset: Ruleset, state: ProxyState) -> int:
        """Stale UDP/SCTP flows go; a failure is counted and logged, never fails the sync."""
        try:
            deleted = self.kernel.delete_stale_flows(
                stale_plan(result, ruleset, serving_flows(state))
            )
        except OSError as err:
            self.metrics.cleanup_failures.inc()
            self._log.warning("conntrack cleanup failed", error=str(err))
            return 0
        self.metrics.conntrack_deleted.inc(deleted)
        return deleted

    def _count(self, done: Done) -> None:
        state, result, changes, first = done.state, done.result, done.changes, done.first
        m = self.metrics
        (m.full_sync_duration if result.full else m.partial_sync_duration).observe(result.seconds)
        m.sync_duration.observe(result.seconds)
        m.last_sync.set_to_current_time()
        m.endpoint_changes.inc(changes.endpoint_changes)
        m.service_changes.inc(changes.service_changes)
        if first is not None:
            m.programming.observe(time.monotonic() - first)
        tables = done.ruleset.tables
        m.elements.set(sum(len(s.elements) for t in tables for s in t.sets))
        m.chains.set(sum(len(t.chains) for t in tables))
        internal = {
            sp.name
            for fs in state.families
            for sp in fs.service_ports
            if sp.internal_local and sp.cluster_endpoints and not sp.local_endpoints
        }
        external = {
            sp.name
            for fs in state.families
            for sp in fs.service_ports
            if sp.external_local and sp.cluster_endpoints and not sp.local_endpoints
        }
        m.no_local_endpoints.labels(traffic_policy="internal").set(
            len({(n.namespace, n.name) for n in internal})
        )
        m.no_local_endpoints.labels(traffic_policy="external").set(
            len({(n.namespace, n.name) for n in external})
        )

    # -- drift ----------------------------------------------------------------

    def check_drift(self) -> int:
        """Read the kernel, compare with what was applied, repair what differs."""
        if self.applied is None or self.dry_run:
            return 0
        current = read_tables(self.kernel)
        ruleset = Ruleset(tuple(t for t in self.applied.values() if t is not None))
        diffs = drift(ruleset, current)
        if not diffs:
            return 0
        for d in diffs:
            self._log.warning(
                "drift found; repairing",
                service=d.service,
                status=d.status,
                kind=d.kind,
                where=d.where,
                text=d.text,
                family=d.family,
            )
        self.metrics.drift_repaired.inc(len(diffs))
        self.applied = current  # the next sync plans against what is really there
        self.wake.set()
        self.repair = True
        return len(diffs)
