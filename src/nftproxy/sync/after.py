"""The steps after a sync, the same for ``apply`` and ``run``: the conntrack entries
of UDP/SCTP flows whose endpoint went away are deleted, then the affinity records
of removed sticky endpoints. Neither fails the sync: the rules are in, and at worst
the flows and records time out on their own. A failure is logged and reported."""

from __future__ import annotations

from dataclasses import dataclass

from nftproxy import log
from nftproxy.nft.kernel import Kernel, NftError
from nftproxy.nft.model import Ruleset
from nftproxy.proxy.state import ProxyState, serving_flows
from nftproxy.sync import affinity
from nftproxy.sync.apply import SyncResult, stale_plan


@dataclass(frozen=True)
class AfterSync:
    """What the steps after a sync did."""

    deleted: int = 0
    """Conntrack entries deleted."""
    forgotten: int = 0
    """Affinity records of removed sticky endpoints deleted."""
    failures: tuple[str, ...] = ()
    """What failed, one line each (logged already)."""

    def __str__(self) -> str:
        text = f"{self.deleted} stale conntrack entries deleted"
        if self.forgotten:
            text += f"; {self.forgotten} clients of removed sticky endpoints forgotten"
        return text + "".join(f"; {failure}" for failure in self.failures)


def after_sync(
    kernel: Kernel, result: SyncResult, ruleset: Ruleset, state: ProxyState
) -> AfterSync:
    """Delete the stale flows a sync made, then forget the removed sticky endpoints'
    clients."""
    failures = []
    deleted = forgotten = 0
    plan = stale_plan(result, ruleset, serving_flows(state))
    try:
        deleted = kernel.delete_stale_flows(plan)
    except OSError as err:
        log.logger().warning("conntrack cleanup failed", error=str(err), entries=len(plan.keep))
        failures.append(f"conntrack cleanup failed: {err}")
    try:
        forgotten = affinity.forget_removed(kernel, result, ruleset)
    except (NftError, OSError) as err:
        log.logger().warning("affinity cleanup failed", error=str(err))
        failures.append(f"affinity cleanup failed: {err}")
    return AfterSync(deleted, forgotten, tuple(failures))
