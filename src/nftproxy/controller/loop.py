"""The sync loop of ``nftproxy run``: the cache's changes in, the kernel in step.

One thread applies; the watch handlers only record (see :mod:`nftproxy.k8s.cache`).
Each sync computes the desired ruleset from every object held, plans it against
what was last applied (kept in memory: the kernel is not read back) and applies
the difference as one transaction. The first plans against what the last process
kept as it stopped (:meth:`Loop.keep`), when the kernel vouches for it: with the
same node settings and build, only the Services and Pods whose objects changed
since are built (:meth:`Loop._adopt`); else against our tables, read. When is the runner's to say
(:mod:`~nftproxy.controller.runner`): at most one sync per ``min_sync``, one every
``sync_period`` even without changes, a drift check every ``drift_period``; after
a failure the next sync reads the kernel and plans against what it holds, and
after a second one in a row the tables are replaced whole (a large ruleset in
stages, so that nft's memory stays bounded). After each successful sync the
after-sync steps (:mod:`~nftproxy.sync.after`: stale conntrack flows, affinity),
then the observer (:mod:`~nftproxy.controller.observe`: healthCheckNodePort
servers, healthz, metrics, the log line).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from nftproxy import log
from nftproxy.controller.observe import Done, Observer
from nftproxy.controller.runner import Runner, Step
from nftproxy.controller.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.controller.serve.metrics import Metrics
from nftproxy.k8s.cache import MAX_TRIGGERS, Cache, Changes, Snapshot
from nftproxy.nft.gcpause import paused_gc
from nftproxy.nft.kernel import Kernel, NftError
from nftproxy.nft.model import Family, Ruleset, Table
from nftproxy.nft.transaction import AddSet, DeleteSet, Transaction
from nftproxy.proxy.state import ServicePort, compute_state
from nftproxy.ruleset.applied import Change, FamilyIndex, OwnerKey, by_owner
from nftproxy.ruleset.build import present
from nftproxy.ruleset.slots import is_backend_map, table_slots
from nftproxy.settings.node import NodeConfig, with_node
from nftproxy.sync import checkpoint as checkpoints
from nftproxy.sync.after import AfterSync, after_sync
from nftproxy.sync.apply import (
    FAMILIES,
    SyncResult,
    adopt,
    adopt_tables,
    as_tables,
    desired_tables,
    drift,
    keep_checkpoint,
    plan_all,
    read_tables,
    replace,
    update,
    update_planned,
)
from nftproxy.sync.checkpoint import Kept, KeptFamily, KeptOwner, generation_of
from nftproxy.sync.plan import Summary

WAIT_SLICE = 0.5
"""The longest the loop waits at once (seconds): how soon it sees SIGTERM."""
FULL_CHECK_EVERY = 10
"""Every this many drift checks read the kernel even when its generation has not moved."""
TRIES_WHILE_CHANGING = 5
"""How often another thread copies what a sync is changing before it gives up."""


@dataclass(frozen=True)
class Timing:
    """How often the loop syncs and checks (seconds)."""

    min_sync: float = 1.0
    sync_period: float = 30.0
    drift_period: float = 60.0


Index = dict[Family, FamilyIndex]
"""What was applied, per family and owner."""


class ReadAhead:
    """What the first sync plans against, found in a thread while the lists arrive:
    what a checkpoint holds when the kernel vouches for it (``run``'s, made an index
    here too), else our tables read; with the kernel's ruleset generation from
    before, which must still be the kernel's when it is taken (nothing committed
    since)."""

    def __init__(self, kernel: Kernel, checkpoint: Path | None) -> None:
        self.kernel = kernel
        self.checkpoint = checkpoint
        self.adopted = False
        """It came from the checkpoint."""
        self.before: int | None = None
        self.moved = True
        """Something was committed after the checkpoint was kept (see
        :func:`moved_since_kept`)."""
        self._read: dict[Family, Table | None] | Kept | None = None
        self._index: Index | None = None
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            start = time.perf_counter()
            self.before = self.kernel.generation()
            self.moved = moved_since_kept(self.before, self.checkpoint)
            found = adopt(self.kernel, self.checkpoint)
            self.adopted = found is not None
            if isinstance(found, Kept):
                self._index = kept_index(found)
            self._read = found if found is not None else read_tables(self.kernel)
            log.logger().info(
                "found what the kernel holds",
                source="checkpoint" if self.adopted else "kernel",
                seconds=round(time.perf_counter() - start, 3),
            )
        except Exception as err:  # the sync reads again, and meets it there
            log.logger().info("no read ahead of the first sync", error=str(err))

    def _taken(self) -> dict[Family, Table | None] | Kept | None:
        self._thread.join()
        if self._read is None or self.kernel.generation() != self.before:
            return None
        return self._read

    def kept(self) -> tuple[Kept, Index] | None:
        """What ``run`` kept, and its index; None when that is not what was found."""
        found = self._taken()
        if not isinstance(found, Kept) or self._index is None:
            return None
        return found, self._index

    def result(self) -> dict[Family, Table | None] | None:
        """The tables, once found; None when that failed or the kernel moved."""
        found = self._taken()
        return None if found is None else as_tables(found)


def moved_since_kept(generation: int | None, checkpoint: Path | None) -> bool:
    """Whether the kernel's ruleset generation is not the one kept beside the
    checkpoint: something was committed after it was kept (perhaps an edit of our
    tables that its stamp cannot show)."""
    return checkpoint is None or generation != generation_of(checkpoint)


def kept_of(index: Index, key: str, fingerprints: dict[OwnerKey, str]) -> Kept:
    """What ``run`` keeps of an index (the inverse of :func:`kept_index`)."""
    held = present({f: idx.has_ports() for f, idx in index.items()})
    return Kept(
        key,
        {
            f: KeptFamily(
                idx.fixed, {o: KeptOwner(frag, idx.entries[o]) for o, frag in idx.fragments.items()}
            )
            for f, idx in index.items()
        },
        frozenset(f for f in index if held[f]),
        fingerprints,
    )


def kept_index(kept: Kept) -> Index:
    """The index of what ``run`` kept."""
    return {
        f: FamilyIndex.held(k.fixed, ((o, p.fragment, p.entries) for o, p in k.owners.items()))
        for f, k in kept.families.items()
    }


def owners(changes: Changes) -> set[OwnerKey]:
    """The Services and Pods a change touches."""
    return {("Service", *k) for k in changes.services} | {("Pod", *k) for k in changes.pods}


def replaces_a_shared_set(txs: tuple[Transaction, ...], fixed: set[str]) -> bool:
    """Whether a plan makes a fixed set or a backends map anew (nft 1.0.6 forces it
    when a ``dnat ... map`` rule is written against a map an earlier transaction
    made): that needs all of its elements, other owners' too, so not a partial
    sync's."""
    deleted = {c.name for tx in txs for c in tx.changes if isinstance(c, DeleteSet)}
    added = {c.set.name for tx in txs for c in tx.changes if isinstance(c, AddSet)}
    return bool((deleted | added) & fixed) or any(map(is_backend_map, deleted & added))


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
        checkpoint: Path | None = None,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kernel = kernel
        self.checkpoint = None if dry_run else checkpoint
        """Where what was applied is kept as the loop stops (None: nowhere)."""
        self.cache = cache
        self.base = base
        self.timing = timing
        self.observer = Observer(base.name, metrics, health, services)
        self.detect_local = detect_local
        self.dry_run = dry_run
        self.out = out
        self.clock = clock
        self.wake = threading.Event()
        self.idle = threading.Event()
        """Set while the loop waits (nothing being applied)."""
        self.last_sync_end = 0.0
        """When the last successful sync ended (monotonic)."""
        self.index: Index | None = None
        """What was applied, per owner (None before the first sync)."""
        self.node: NodeConfig | None = None
        """The node settings the index was built with."""
        self.clashes = False
        """Two owners claimed one address and port: syncs are full until that ends."""
        self._read: dict[Family, Table | None] | None = None
        """The kernel as the drift check read it, for the repairing sync."""
        self._generation: int | None = None
        """The kernel's ruleset generation right after the last sync."""
        self._checks = 0
        self._recount = False
        """The next sync is a restart's first, partial: the observer must then learn
        of every Service (see :meth:`_recount_all`)."""
        self.verify = False
        """The next drift check reads the kernel whatever its generation (the first
        sync adopted a checkpoint, and something was committed since it was kept)."""
        self.stopping = False
        """Set by a signal handler: end after the sync in flight (no lock involved)."""
        self.need_read = False
        """Plan the next sync against a fresh read of the kernel (after a failure)."""
        self.repair = False
        self.syncs = 0
        self.failures = 0
        self.failed_in_row = 0
        """Failed syncs since the last one that landed."""
        self.last_result: SyncResult | None = None
        self.last_partial = False
        """Whether the last sync planned only what changed."""
        self._ahead: ReadAhead | None = None
        """The first sync's read of the kernel, started early (see :meth:`read_ahead`)."""
        self._triggers: list[float] = []
        """When the changes not yet in the kernel were triggered (wall clock): carried
        over failed syncs, observed as programming latency by the one that lands."""
        self._log = log.logger()

    def changed(self) -> None:
        """The cache's callback: something changed (any thread)."""
        self.observer.queued()
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
            if stop.wait(0.05) or self.stopping:
                return
        runner = Runner(
            self.timing.min_sync, self.timing.sync_period, self.timing.drift_period, self.clock
        )
        while not stop.is_set() and not self.stopping:
            wanted = self.cache.pending() or self.need_read or self.repair
            # The index, not `applied`: that assembles the whole table (80 ms at
            # 10,000 Services), and this runs on every wake.
            step, wait = runner.decide(wanted=wanted, can_check=self.index is not None)
            if step is Step.SYNC:
                ok = self.sync_once()
                if ok and self.syncs == 1:
                    after_first()
                runner.synced(ok)
            elif step is Step.DRIFT:
                self._guarded("drift", self.check_drift)
            else:
                self.idle.set()
                # In slices: a signal the kernel hands to another thread runs its Python
                # handler only when this (the main) thread next runs Python code.
                self.wake.wait(min(wait, WAIT_SLICE))
                self.idle.clear()
                self.wake.clear()

    def _guarded(self, step: str, work: Callable[[], object]) -> None:
        """Run work; a failure is logged with its kind, counted, and left for the
        next time (the loop stops only when told to)."""
        try:
            work()
        except Exception as err:
            self.observer.error(step, err)

    def sync_once(self) -> bool:
        """One sync of what changed (or of everything); False when it failed (the
        kernel refused it, or anything else went wrong: logged, counted, and the
        next sync plans against a fresh read of the kernel)."""
        self.wake.clear()
        try:
            return self._sync()
        except Exception as err:
            self._failed(err)
            return False

    def _sync(self) -> bool:
        if self.index is None and not self.need_read and self._ahead is not None:
            self._adopt(self._ahead)
        if self.index is None or self.need_read or self.repair or self.clashes:
            snap, changes = self._take(self.cache.take)
            return self._sync_all(snap, changes)
        snap, changes = self._take(self.cache.take_changed)
        node = self._node_of(snap)
        if not changes.node and node == self.node:
            done = self._sync_changed(snap, changes, node)
            if done is not None:
                return done
        return self._sync_all(self.cache.held(), changes)

    @paused_gc()
    def _sync_all(self, snap: Snapshot, changes: Changes) -> bool:
        """Compute everything, plan against what was applied (on the first sync: what
        a checkpoint kept, or the tables read)."""
        node = self._node_of(snap)
        state = compute_state(snap.objects, node)
        if self.repair and self._read is not None:
            current = self._read  # what the drift check read
        elif self.index is not None and not self.need_read:
            current = desired_tables(self._ruleset(self.index))  # what was applied
        elif self.index is None and not self.need_read:
            current, self.verify = self._found()  # the first sync
        else:
            current = read_tables(self.kernel)
        old, held = self.index or {}, self.cache.held_owners()
        index = {
            fs.node.family: FamilyIndex.of(fs, table_slots(current.get(fs.node.family))).keeping(
                old.get(fs.node.family), held
            )
            for fs in state.families
        }
        ruleset = self._ruleset(index)
        try:
            if self.need_read and self.failed_in_row > 1:
                result = self._replace(ruleset, current)
            else:
                result = update(self.kernel, ruleset, current, dry_run=self.dry_run)
        except NftError as err:
            self._failed(err)
            return False
        self.index, self.node, self._read = index, node, None
        self.clashes = state.clashes > 0
        self._recount = False  # this sync counts every Service
        self.observer.forget()
        self._done(Done(snap, state, ruleset, result, changes, partial=False))
        return True

    def _adopt(self, ahead: ReadAhead) -> None:
        """Before the first sync: take the index the last process kept, when it was
        kept of these node settings by this build, and leave the sync only what
        changed since (the partial path then runs, as after any change: nothing is
        built for the rest)."""
        kept = ahead.kept()
        if kept is None:
            return
        snap = self.cache.held()
        node = self._node_of(snap)
        if kept[0].key != checkpoints.key_of(repr(node)):
            return  # built otherwise: the first sync builds all, planned against its tables
        self._ahead = None
        self.index, self.node = kept[1], node
        self._recount = True
        settled = self.cache.settle(kept[0].fingerprints)
        self.verify = ahead.moved
        owned = sum(len(idx.fragments) for idx in self.index.values())
        self._log.info("took what the last process applied", owners=owned, unchanged=settled)

    def read_ahead(self) -> None:
        """Start finding what the first sync plans against (a checkpoint, or our
        tables read) in a thread of their own, while the lists arrive (the reflectors
        mostly wait for the API server: at 10,000 Services the read, 0.9 s, fits in
        the lists' time). Until the first sync takes it, nothing else may use the
        kernel's socket."""
        if self._ahead is None and self.index is None:
            self._ahead = ReadAhead(self.kernel, self.checkpoint)

    def _found(self) -> tuple[dict[Family, Table | None], bool]:
        """What the first sync plans against, found ahead if the kernel has not
        moved since (else now); and whether a drift check must read the kernel
        soon: a checkpoint was adopted, and something was committed after it was
        kept (perhaps an edit of our tables that its stamp cannot show)."""
        ahead, self._ahead = self._ahead, None
        found = None if ahead is None else ahead.result()
        if ahead is not None and found is not None:
            return found, ahead.adopted and ahead.moved
        moved = moved_since_kept(self.kernel.generation(), self.checkpoint)
        adopted = adopt_tables(self.kernel, self.checkpoint)
        if adopted is not None:
            return adopted, moved
        return read_tables(self.kernel), False

    def _replace(self, ruleset: Ruleset, current: dict[Family, Table | None]) -> SyncResult:
        """Failed again, even planned against a fresh read: replace the tables
        whole; a large ruleset in stages, as a fresh load, so that nft's memory
        stays bounded (one script at 5,000 x 50 needs ~1 GB), at the price of our
        traffic stopping until the last stage."""
        self._log.warning("replacing the tables whole", failed_in_row=self.failed_in_row)
        return replace(self.kernel, ruleset, current=current, dry_run=self.dry_run, staged=True)

    def _sync_changed(self, snap: Snapshot, changes: Changes, node: NodeConfig) -> bool | None:
        """Compute and plan only what changed; None when that cannot be done alone
        (the full path then runs)."""
        assert self.index is not None
        state = compute_state(snap.objects, node)
        if state.clashes:
            return None
        touched = owners(changes)
        planned: dict[Family, Change] = {}
        for fs in state.families:
            ports: dict[OwnerKey, list[ServicePort]] = {key: [] for key in touched}
            ports.update(by_owner(fs.service_ports))
            change = self.index[fs.node.family].change(fs.node, ports)
            if change is None:
                return None
            planned[fs.node.family] = change
        was = present({f: idx.has_ports() for f, idx in self.index.items()})
        if present({f: self.index[f].has_ports(c) for f, c in planned.items()}) != was:
            return None
        current = {f: planned[f].current if was[f] else None for f in FAMILIES}
        desired = {f: planned[f].desired if was[f] else None for f in FAMILIES}
        txs = plan_all(desired, current)
        fixed = {st.name for idx in self.index.values() for st in idx.fixed.sets}
        if replaces_a_shared_set(txs, fixed):
            return None
        ruleset = Ruleset(tuple(t for t in desired.values() if t is not None))
        if not txs:
            result = SyncResult((), None, Summary(), 0.0, False, current)
        else:
            try:
                result = update_planned(self.kernel, ruleset, current, txs, dry_run=self.dry_run)
            except NftError as err:
                self._failed(err)
                return False
        for family, change in planned.items():
            self.index[family].commit(change)
        self.observer.forget(changes.services)
        self._done(Done(snap, state, ruleset, result, changes, partial=True))
        if self._recount:
            self._recount_all()
        return True

    def _recount_all(self) -> None:
        """After the first sync of a restart that took the last process's index:
        what the observer knows of every Service, not only of those that sync built
        (their healthCheckNodePort servers above all). Once: 0.3 s at 10,000 Services."""
        self._recount = False
        snap = self.cache.held()
        if self.node is not None:
            self.observer.count_services(snap, compute_state(snap.objects, self.node))

    def _node_of(self, snap: Snapshot) -> NodeConfig:
        """The node settings with what snap holds of the node and ServiceCIDRs."""
        return with_node(self.base, snap.node, snap.cidrs, self.detect_local)

    def _take(self, take: Callable[[], tuple[Snapshot, Changes]]) -> tuple[Snapshot, Changes]:
        """The cache's snapshot and changes; their trigger times join those carried."""
        snap, changes = take()
        room = MAX_TRIGGERS - len(self._triggers)
        self._triggers += changes.triggers[: max(room, 0)]
        return snap, changes

    def _ruleset(self, index: dict[Family, FamilyIndex]) -> Ruleset:
        held = present({f: idx.has_ports() for f, idx in index.items()})
        tables = tuple(index[f].table() for f in FAMILIES if held[f])
        return Ruleset(tables, tuple(f for f in FAMILIES if not held[f]))

    def owners(self, kind: str) -> frozenset[tuple[str, str]] | None:
        """``(namespace, name)`` of the owners of a kind (``Service``, ``Pod``) the
        last sync programmed; None before the first. Safe from any thread."""
        index = self.index
        if index is None:
            return None
        for _ in range(TRIES_WHILE_CHANGING):
            try:
                held = [frozenset(idx.fragments) for idx in index.values()]
            except RuntimeError:  # the loop committed meanwhile: dictionary changed size
                continue
            return frozenset((ns, name) for f in held for k, ns, name in f if k == kind)
        return None

    @property
    def applied(self) -> dict[Family, Table | None] | None:
        """What the kernel holds, as far as the loop knows (None before the first sync)."""
        if self.index is None:
            return None
        return desired_tables(self._ruleset(self.index))

    def _failed(self, err: Exception) -> None:
        self.failures += 1
        self.failed_in_row += 1
        # The next sync reads the kernel and plans against it (what was applied is
        # not trusted); if that fails too, the one after replaces the tables whole.
        self.need_read = True
        self.observer.failed(err, self.failed_in_row)

    def _done(self, done: Done) -> None:
        done = dataclasses.replace(done, triggers=tuple(self._triggers))
        self._triggers = []
        if not self.dry_run:
            self._generation = self.kernel.generation()
        self.need_read = self.repair = False
        self.failed_in_row = 0
        self.syncs += 1
        self.last_result = done.result
        self.last_partial = done.partial
        self.last_sync_end = time.monotonic()
        if self.dry_run:
            self.out.write(done.result.script)
            self.out.flush()
        self._after(done)

    def _after(self, done: Done) -> None:
        if self.dry_run:
            after = AfterSync()
        else:
            after = after_sync(self.kernel, done.result, done.desired, done.state)
        if after.forgotten:  # our own commit: the next drift check need not read the kernel
            self._generation = self.kernel.generation()
        index = self.index or {}
        self.observer.synced(
            done,
            after,
            sum(idx.element_count() for idx in index.values()),
            sum(idx.chain_count() for idx in index.values()),
        )

    def keep(self) -> bool:
        """As the loop stops: keep what was applied in the checkpoint and stamp the
        kernel's tables with it, so that the next process need not read them. Not
        when nothing was applied, or when the kernel may hold something else (the
        last sync failed, or drift waits for repair). False when nothing was kept."""
        if self.checkpoint is None or self.index is None or self.need_read or self.repair:
            return False
        index = self.index
        kept = kept_of(index, checkpoints.key_of(repr(self.node)), self.cache.fingerprints())
        tables = {f: index[f].fixed if f in kept.present else None for f in FAMILIES}
        try:
            keep_checkpoint(self.kernel, checkpoints.encode_kept(kept), tables, self.checkpoint)
        except Exception as err:  # the next process reads the kernel instead
            self.observer.error("checkpoint", err)
            return False
        return True

    # -- drift ----------------------------------------------------------------

    def check_drift(self) -> int:
        """Read the kernel, compare with what was applied, repair what differs.

        When no transaction was committed since the last sync (the kernel's ruleset
        generation is where that sync left it), nothing can differ and the read is
        skipped, except every ``FULL_CHECK_EVERY`` checks (a change made between
        a sync and its reading of the generation would hide until then)."""
        if self.index is None or self.dry_run:
            return 0
        self._checks += 1
        seen = self.kernel.generation()
        if not self.verify and self._checks % FULL_CHECK_EVERY and seen == self._generation:
            return 0
        self.verify = False
        current = read_tables(self.kernel)
        diffs = drift(self._ruleset(self.index), current)
        if not diffs:
            self._generation = seen  # somebody else's change: ours is intact
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
        self.observer.drift(len(diffs))
        self._read = current  # the repairing sync plans against what is really there
        self.wake.set()
        self.repair = True
        return len(diffs)
