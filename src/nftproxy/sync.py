"""One sync: read our tables from the kernel, plan the difference, apply it atomically.

The seam is :class:`~nftproxy.kernel.Kernel`; planning is the pure
:func:`~nftproxy.plan.plan`. A transaction the kernel refuses changes nothing;
it is retried (tenacity, with backoff), and every retry replaces our tables
whole instead of patching them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import tenacity

from nftproxy import names
from nftproxy.conntrack import PROTOCOLS, StaleFlow
from nftproxy.kernel import Kernel, NftError
from nftproxy.nft.model import DataType, Family, Ruleset, Table
from nftproxy.nft.parse import parse_table
from nftproxy.nft.render import render_script, render_transaction
from nftproxy.nft.transaction import Transaction
from nftproxy.plan import Summary, plan, summarize

FAMILIES = (Family.IP, Family.IP6)


@dataclass(frozen=True)
class SyncResult:
    """What a sync did."""

    transactions: tuple[Transaction, ...]
    script: str
    summary: Summary
    seconds: float
    full: bool
    stale_flows: tuple[StaleFlow, ...]


def read_tables(kernel: Kernel, table: str = names.TABLE) -> dict[Family, Table | None]:
    """Our tables as the kernel holds them (None where absent)."""
    return {f: _parse(kernel, f, table) for f in FAMILIES}


def _parse(kernel: Kernel, family: Family, table: str) -> Table | None:
    listing = kernel.list_table(family, table)
    return None if listing is None else parse_table(listing, family, table)


def desired_tables(ruleset: Ruleset) -> dict[Family, Table | None]:
    """The desired table per family (None where it must not exist)."""
    have = {t.family: t for t in ruleset.tables}
    return {f: have.get(f) for f in FAMILIES}


def plan_all(
    desired: dict[Family, Table | None],
    current: dict[Family, Table | None],
    table: str = names.TABLE,
) -> tuple[Transaction, ...]:
    """One transaction per family that needs one."""
    txs = (plan(desired[f], current[f], f, table) for f in FAMILIES)
    return tuple(tx for tx in txs if tx)


def _endpoints(t: Table | None) -> Iterator[tuple[str, str, int, str, int]]:
    """(proto, entry addr, entry port, endpoint addr, endpoint port) of UDP/SCTP backends."""
    if t is None:
        return
    for s in t.sets:
        if s.is_map and s.value == (DataType.ADDR, DataType.SERVICE) and not s.dynamic:
            for e in s.elements:
                addr, proto, port = e.key[:3]
                if proto in PROTOCOLS and e.value is not None:
                    yield proto, addr, int(port), e.value[0], int(e.value[1])


def stale_flows(
    desired: dict[Family, Table | None], current: dict[Family, Table | None]
) -> tuple[StaleFlow, ...]:
    """UDP/SCTP entry-to-endpoint pairs the kernel has and the desired state drops."""
    out: set[StaleFlow] = set()
    for f in FAMILIES:
        keep = set(_endpoints(desired[f]))
        out.update(StaleFlow(*x) for x in _endpoints(current[f]) if x not in keep)
    return tuple(sorted(out, key=lambda s: (s.entry_addr, s.entry_port, s.endpoint_addr)))


def sync(
    kernel: Kernel,
    ruleset: Ruleset,
    *,
    dry_run: bool = False,
    full: bool = False,
    table: str = names.TABLE,
) -> SyncResult:
    """Make the kernel hold ruleset: incrementally, or whole with ``full``."""
    start = time.perf_counter()
    current = read_tables(kernel, table)
    desired = desired_tables(ruleset)
    txs = plan_all(desired, current, table)
    summary = sum((summarize(tx) for tx in txs), Summary())
    script = render_script(ruleset, table) if full else "".join(map(render_transaction, txs))
    if not dry_run and (txs or full):
        kernel.run(script)
    return SyncResult(
        txs, script, summary, time.perf_counter() - start, full, stale_flows(desired, current)
    )


def sync_with_retries(
    kernel: Kernel, ruleset: Ruleset, *, attempts: int = 3, table: str = names.TABLE
) -> SyncResult:
    """``sync``, retried with backoff; retries replace the tables whole."""
    state = {"full": False}

    def attempt() -> SyncResult:
        try:
            return sync(kernel, ruleset, full=state["full"], table=table)
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
