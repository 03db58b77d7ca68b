"""One sync: read our tables from the kernel, plan the difference, apply it atomically.

The seam is :class:`~nftproxy.nft.kernel.Kernel`; planning is the pure
:func:`~nftproxy.sync.plan.plan`. A transaction the kernel refuses changes nothing;
it is retried (tenacity, with backoff), and every retry replaces our tables
whole instead of patching them.

Reading our tables back costs about 0.9 s at 10,000 Services (7.5 s at 5,000 x
50 endpoints), so a sync can keep a checkpoint of what it applied
(:mod:`~nftproxy.sync.checkpoint`): when the stamp in each of the kernel's tables
is the checkpoint's digest, nothing is read and the sync plans against the
checkpoint's tables. Elements edited by hand since are drift, for ``diff`` (and
``run``'s drift check) to find.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tenacity

from nftproxy.nft.conntrack import EntryKey, StalePlan, Target, plan_stale
from nftproxy.nft.gcpause import paused_gc
from nftproxy.nft.kernel import Kernel, Libnftables, NftError
from nftproxy.nft.model import Element, Family, Ruleset, Table
from nftproxy.nft.parse import parse_table
from nftproxy.nft.render import render_batch
from nftproxy.nft.transaction import (
    AddChain,
    AddElements,
    Batch,
    Change,
    DeleteChain,
    DeleteElements,
    FlushChain,
    FlushSet,
    Transaction,
)
from nftproxy.ruleset import names
from nftproxy.ruleset.slots import align_tables, is_backend_map
from nftproxy.sync import checkpoint as checkpoints
from nftproxy.sync.checkpoint import Encoded, Kept
from nftproxy.sync.plan import Summary, plan, summarize
from nftproxy.sync.reach import reach_all
from nftproxy.sync.report import Difference, differences

FAMILIES = (Family.IP, Family.IP6)


@dataclass(frozen=True)
class SyncResult:
    """What a sync did."""

    transactions: tuple[Transaction, ...]
    batch: Batch | None
    """What went (or, with ``--dry-run``, would go) to the kernel; None for nothing."""
    summary: Summary
    seconds: float
    full: bool
    previous: dict[Family, Table | None]
    """What the sync planned against: the rules it replaced."""
    from_checkpoint: bool = False

    @property
    def script(self) -> str:
        """The batch as nft's text (rendered only when asked: --dry-run prints it)."""
        return "" if self.batch is None else render_batch(self.batch)


def read_tables(
    kernel: Kernel, table: str = names.TABLE, *, via_nft: bool = False
) -> dict[Family, Table | None]:
    """Our tables as the kernel holds them (None where absent): read over netlink,
    or with ``via_nft`` from nft's JSON listing (slower; a second opinion)."""
    if via_nft:
        return {f: _via_nft(kernel, f, table) for f in FAMILIES}
    return {f: kernel.read_table(f, table) for f in FAMILIES}


def _via_nft(kernel: Kernel, family: Family, table: str) -> Table | None:
    listing = kernel.list_table(family, table)
    return None if listing is None else parse_table(listing, family, table)


def _read_in_worker(netns: str | None, table: str, via_nft: bool) -> dict[Family, Table | None]:
    return read_tables(Libnftables(netns), table, via_nft=via_nft)


def read_ahead(
    netns: str | None, table: str = names.TABLE, *, via_nft: bool = False
) -> Callable[[], dict[Family, Table | None]]:
    """Start reading our tables in a forked worker; the function returned waits for them.

    Reading the kernel and building the desired ruleset are both bound to the
    interpreter; on two cores a worker process lets them overlap (about 0.5 s of
    a 2 s ``diff`` at 10,000 Services). The tables come back pickled.
    """
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(_read_in_worker, netns, table, via_nft)

    def wait() -> dict[Family, Table | None]:
        try:
            return future.result()
        finally:
            pool.shutdown()

    return wait


@paused_gc()
def drift(
    ruleset: Ruleset,
    current: dict[Family, Table | None],
    table: str = names.TABLE,
    *,
    chain_comments: bool = True,
) -> list[Difference]:
    """What differs between the ruleset and what the kernel holds (empty when in sync).

    ``chain_comments=False`` for a state read through nft's JSON listing, which
    does not show them."""
    desired = desired_tables(ruleset)
    if not chain_comments:
        desired = without_chain_comments(desired)
    desired = align_tables(desired, current)
    return differences(plan_all(desired, current, table, align=False), desired, current)


def without_chain_comments(tables: dict[Family, Table | None]) -> dict[Family, Table | None]:
    """The tables with every chain's comment left out (nft 1.0.6's JSON has none)."""
    return {
        f: None
        if t is None
        else dataclasses.replace(
            t, chains=tuple(dataclasses.replace(c, comment=None) for c in t.chains)
        )
        for f, t in tables.items()
    }


def desired_tables(ruleset: Ruleset) -> dict[Family, Table | None]:
    """The desired table per family (None where it must not exist)."""
    have = {t.family: t for t in ruleset.tables}
    return {f: have.get(f) for f in FAMILIES}


def plan_all(
    desired: dict[Family, Table | None],
    current: dict[Family, Table | None],
    table: str = names.TABLE,
    *,
    align: bool = True,
) -> tuple[Transaction, ...]:
    """One transaction per family that needs one. The desired endpoints take the
    slots current gives them (:mod:`nftproxy.ruleset.slots`) unless ``align`` is False
    (desired is aligned already)."""
    if align:
        desired = align_tables(desired, current)
    txs = (plan(desired[f], current[f], f, table) for f in FAMILIES)
    return tuple(tx for tx in txs if tx)


_ENTRY_MAPS = {names.SERVICE_IPS, names.NO_ENDPOINT_SERVICES}
"""Besides the backends maps: the maps keyed by a Service entry."""


def _touched(txs: tuple[Transaction, ...]) -> tuple[set[EntryKey], set[str]]:
    """The UDP/SCTP entries whose elements a sync changed, and the chains it changed."""
    keys: set[EntryKey] = set()
    chains: set[str] = set()
    for tx in txs:
        for c in tx.changes:
            if isinstance(c, (AddElements, DeleteElements)) and (
                c.set.name in _ENTRY_MAPS or is_backend_map(c.set.name)
            ):
                keys.update((e.key[1], e.key[0], int(e.key[2])) for e in c.elements)
            elif isinstance(c, (AddChain, DeleteChain, FlushChain)):
                chains.add(c.chain.name if isinstance(c, AddChain) else c.name)
    return keys, chains


def changed_chains(result: SyncResult) -> set[str] | None:
    """The chains a sync changed; None after a full load (all of them)."""
    return None if result.full else _touched(result.transactions)[1]


def stale_plan(
    result: SyncResult, ruleset: Ruleset, serving: Mapping[EntryKey, frozenset[Target]]
) -> StalePlan:
    """The UDP/SCTP flows that a sync made stale. Only the entries whose elements or
    chains the sync changed are looked at (all after a full load): O(changes)."""
    keys, chains = (None, set[str]()) if result.full else _touched(result.transactions)
    if keys is not None and not keys and not chains:
        return StalePlan({})
    before = reach_all(result.previous, keys, chains)
    after = reach_all(desired_tables(ruleset), keys, chains)
    return plan_stale(before, after, serving)


# -- checkpoints --------------------------------------------------------------


def new_generation() -> str:
    """A fresh stamp for a sync that keeps no checkpoint (random: it vouches for no file)."""
    return "gen:" + secrets.token_hex(16)


def kernel_stamps(kernel: Kernel, table: str = names.TABLE) -> dict[Family, str | None] | None:
    """The stamp each family's table holds (None where there is no table); None when
    a table holds none."""
    stamps: dict[Family, str | None] = {}
    for family in FAMILIES:
        if table not in kernel.tables(family):
            stamps[family] = None
            continue
        applied = kernel.read_set(family, table, names.APPLIED)
        stamp = None if applied is None else next((e.comment for e in applied.elements), None)
        if stamp is None:
            return None
        stamps[family] = stamp
    return stamps


def adopt(kernel: Kernel, path: Path | None, table: str = names.TABLE) -> Current | Kept | None:
    """What the checkpoint at path holds (tables, or what ``run`` kept), when the
    kernel's tables are exactly those it vouches for (each holds its stamp, and no
    other table of ours is there); else None (the kernel must be read)."""
    stamps = None if path is None else kernel_stamps(kernel, table)
    held = set() if stamps is None else {s for s in stamps.values() if s is not None}
    if path is None or stamps is None or len(held) != 1:
        return None
    found = checkpoints.load(path, held.pop())
    if found is None:
        return None
    if isinstance(found, Kept):
        present = found.present
    else:
        present = frozenset(f for f, t in found.items() if t is not None)
    if any((f in present) != (stamps[f] is not None) for f in FAMILIES):
        return None
    return found if isinstance(found, Kept) else as_tables(found)


def adopt_tables(kernel: Kernel, path: Path | None, table: str = names.TABLE) -> Current | None:
    """:func:`adopt`, as tables."""
    found = adopt(kernel, path, table)
    return None if found is None else as_tables(found)


def as_tables(found: Current | Kept) -> Current:
    """Our table per family (None where absent) of what a checkpoint holds: tables,
    or what ``run`` kept."""
    tables = found.tables() if isinstance(found, Kept) else found
    return {f: tables.get(f) for f in FAMILIES}


def _stamp(desired: Table, stamp: str) -> tuple[Change, ...]:
    """The changes that write a stamp into a table's ``applied`` set."""
    applied = next(s for s in desired.sets if s.name == names.APPLIED)
    return FlushSet(names.APPLIED), AddElements(applied, (Element(("0",), None, stamp),))


def _stamps(tables: Current, stamp: str, table: str) -> tuple[Transaction, ...]:
    return tuple(
        Transaction(f, table, _stamp(t, stamp)) for f, t in tables.items() if t is not None
    )


def keep_checkpoint(kernel: Kernel, encoded: Encoded, tables: Current, path: Path) -> None:
    """Write a checkpoint (of what the kernel holds of our tables, as far as the
    caller knows), then stamp the tables (``tables``: each with its ``applied`` set,
    None where there is none) with it: the next process may adopt it instead of
    reading. ``run`` does this as it stops; the kernel's ruleset generation right
    after is kept beside it (see :func:`~nftproxy.sync.checkpoint.save_generation`)."""
    checkpoints.save(path, encoded)
    kernel.apply(Batch(names.TABLE, after=_stamps(tables, encoded.stamp, names.TABLE)))
    checkpoints.save_generation(path, kernel.generation())


# -- syncing ------------------------------------------------------------------


Current = dict[Family, Table | None]
"""What the kernel holds of our tables, per family (None where absent)."""


def sync(
    kernel: Kernel,
    ruleset: Ruleset,
    *,
    checkpoint: Path | None = None,
    current: Current | None = None,
    table: str = names.TABLE,
) -> SyncResult:
    """Make the kernel hold ruleset: plan against what it holds and apply the
    difference. What it holds is the checkpoint's tables when the kernel vouches
    for them, else ``current`` (the kernel read a moment ago), else read now. The
    one-shot ``apply``'s sync."""
    return _sync(kernel, ruleset, checkpoint=checkpoint, read_already=current, table=table)


def replace(
    kernel: Kernel,
    ruleset: Ruleset,
    *,
    current: Current | None = None,
    dry_run: bool = False,
    table: str = names.TABLE,
    staged: bool = False,
) -> SyncResult:
    """Make the kernel hold ruleset by replacing our tables whole (nothing of what
    was there is trusted). ``staged``: a large ruleset goes in stages, as into an
    empty kernel, with our traffic stopped until the last (``Batch.staged``)."""
    return _sync(
        kernel,
        ruleset,
        full=True,
        read_already=current,
        dry_run=dry_run,
        table=table,
        staged=staged,
    )


def preview(kernel: Kernel, ruleset: Ruleset, *, current: Current | None = None) -> SyncResult:
    """What :func:`sync` would apply, not applied (``--dry-run``)."""
    return _sync(kernel, ruleset, dry_run=True, read_already=current)


def update(
    kernel: Kernel, ruleset: Ruleset, applied: Current, *, dry_run: bool = False
) -> SyncResult:
    """Plan ruleset against what was applied last (or what a drift check read) and
    apply the difference; ruleset keeps applied's endpoint slots already (the
    loop's full path)."""
    return _sync(kernel, ruleset, read_already=applied, aligned_already=True, dry_run=dry_run)


def update_planned(
    kernel: Kernel,
    ruleset: Ruleset,
    applied: Current,
    planned: tuple[Transaction, ...],
    *,
    dry_run: bool = False,
) -> SyncResult:
    """Apply transactions the caller planned from applied to ruleset (the loop's
    partial path: ruleset and applied hold only the owners that changed)."""
    return _sync(kernel, ruleset, read_already=applied, planned=planned, dry_run=dry_run)


def sync_with_retries(
    kernel: Kernel,
    ruleset: Ruleset,
    *,
    attempts: int = 3,
    checkpoint: Path | None = None,
    table: str = names.TABLE,
    current: Current | None = None,
) -> SyncResult:
    """:func:`sync`, retried with backoff; retries replace the tables whole (and
    read the kernel again)."""
    state = {"full": False}

    def attempt() -> SyncResult:
        ahead = None if state["full"] else current
        try:
            return _sync(
                kernel,
                ruleset,
                full=state["full"],
                checkpoint=checkpoint,
                table=table,
                read_already=ahead,
            )
        finally:
            state["full"] = True

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2),
        retry=tenacity.retry_if_exception_type(NftError),
        reraise=True,
    )
    result: SyncResult = retrying(attempt)
    return result


@paused_gc()
def _sync(
    kernel: Kernel,
    ruleset: Ruleset,
    *,
    dry_run: bool = False,
    full: bool = False,
    checkpoint: Path | None = None,
    table: str = names.TABLE,
    read_already: Current | None = None,
    planned: tuple[Transaction, ...] | None = None,
    aligned_already: bool = False,
    staged: bool = False,
) -> SyncResult:
    """Every sync, by its switches; callers use the named operations above.

    ``read_already`` is what the kernel holds (read a moment ago, or what was
    applied last), used instead of reading it when no checkpoint is trusted;
    ``planned`` the transactions from it to ruleset; ``aligned_already`` that
    ruleset keeps the slots ``read_already`` holds (:mod:`nftproxy.ruleset.slots`).
    """
    start = time.perf_counter()
    desired = desired_tables(ruleset)
    adopted = None if full or checkpoint is None else adopt_tables(kernel, checkpoint, table)
    trusted = adopted is not None
    if adopted is not None:
        current = adopted
    else:
        current = read_already if read_already is not None else read_tables(kernel, table)
    given = aligned_already and not trusted and read_already is not None
    aligned = desired if given else align_tables(desired, current)
    txs = plan_all(aligned, current, table, align=False) if planned is None or trusted else planned
    summary = sum((summarize(tx) for tx in txs), Summary())
    fresh = all(t is None for t in current.values())
    full = full or fresh  # nothing there: load it whole
    applied = desired if full else aligned  # a full load is the ruleset as built
    keep = checkpoint is not None and not dry_run and (txs or full or not trusted)
    encoded = checkpoints.encode(applied) if keep else None
    stamp = new_generation() if encoded is None else encoded.stamp
    stamps = _stamps(desired, stamp, table)
    batch = Batch(table, txs, ruleset if full else None, stamps, fresh=fresh, staged=staged)
    if not dry_run and (txs or full or not trusted):
        kernel.apply(batch)
        if checkpoint is not None and encoded is not None:
            checkpoints.save(checkpoint, encoded)
    seconds = time.perf_counter() - start
    return SyncResult(txs, batch, summary, seconds, full, current, from_checkpoint=trusted)
