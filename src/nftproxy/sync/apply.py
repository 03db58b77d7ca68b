"""One sync: read our tables from the kernel, plan the difference, apply it atomically.

The seam is :class:`~nftproxy.nft.kernel.Kernel`; planning is the pure
:func:`~nftproxy.sync.plan.plan`. A transaction the kernel refuses changes nothing;
it is retried (tenacity, with backoff), and every retry replaces our tables
whole instead of patching them.

Reading every element back costs about 0.6 s at 10,000 Services, so a sync
can keep a checkpoint of the elements it applied: when the checkpoint's
generation (a random token, written into each table's ``applied`` set in the
same transaction) is still what the kernel holds, the tables are read without
their elements and planned against the checkpoint's. Elements edited by hand
since are drift, for ``diff`` to find.
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
    """A fresh name for what one sync applies (random: only equality matters)."""
    return "gen:" + secrets.token_hex(16)


def kernel_generation(
    kernel: Kernel, desired: dict[Family, Table | None], table: str = names.TABLE
) -> str | None:
    """The generation the kernel's tables hold, if every table there agrees."""
    found = set()
    for family in FAMILIES:
        applied = kernel.read_set(family, table, names.APPLIED)
        if applied is None:
            if desired[family] is not None:
                return None
            continue
        found.add(next((e.comment for e in applied.elements if e.comment), None))
    return found.pop() if len(found) == 1 else None


def _stamp(desired: Table, stamp: str) -> tuple[Change, ...]:
    """The changes that write a generation into a table's ``applied`` set."""
    applied = next(s for s in desired.sets if s.name == names.APPLIED)
    return FlushSet(names.APPLIED), AddElements(applied, (Element(("0",), None, stamp),))


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
    difference. What it holds is the checkpoint's state when the kernel's
    generation matches it, else ``current`` (the kernel read a moment ago), else
    read now. The one-shot ``apply``'s sync."""
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
    stamp = new_generation()
    saved = checkpoints.load(checkpoint) if checkpoint is not None and not full else None
    trusted = saved is not None and kernel_generation(kernel, desired, table) == saved.generation
    filled = None
    if saved is not None and trusted:
        structure = {f: kernel.read_table(f, table, elements=False) for f in FAMILIES}
        filled = saved.fill(structure)
        trusted = filled is not None
    if filled is not None:
        current = filled
    else:
        current = read_already if read_already is not None else read_tables(kernel, table)
    given = aligned_already and filled is None and read_already is not None
    aligned = desired if given else align_tables(desired, current)
    txs = plan_all(aligned, current, table, align=False) if planned is None or trusted else planned
    summary = sum((summarize(tx) for tx in txs), Summary())
    stamps = tuple(
        Transaction(f, table, _stamp(t, stamp)) for f, t in desired.items() if t is not None
    )
    fresh = all(t is None for t in current.values())
    full = full or fresh  # nothing there: load it whole
    batch = Batch(table, txs, ruleset if full else None, stamps, fresh=fresh, staged=staged)
    if not dry_run and (txs or full or not trusted):
        kernel.apply(batch)
        if checkpoint is not None:
            applied = desired if full else aligned  # a full load is the ruleset as built
            checkpoints.save(checkpoint, checkpoints.Checkpoint.of(stamp, applied))
    seconds = time.perf_counter() - start
    return SyncResult(txs, batch, summary, seconds, full, current, from_checkpoint=trusted)
