"""The commands that touch the kernel: apply, diff, cleanup (loaded only when used)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nftproxy import affinity, log, report
from nftproxy.cleanup import cleanup
from nftproxy.conntrack import StalePlan
from nftproxy.features import missing_features
from nftproxy.kernel import Libnftables, NftError
from nftproxy.nft.model import Ruleset
from nftproxy.pipeline import desired, status
from nftproxy.state import serving_flows
from nftproxy.sync import SyncResult, drift, read_ahead, stale_plan, sync, sync_with_retries


def _kernel(args: argparse.Namespace) -> Libnftables:
    return Libnftables(args.netns)


CHECKPOINT_DIR = Path("/var/lib/nftproxy")


def _checkpoint(args: argparse.Namespace) -> Path | None:
    """Where apply keeps what it applied (one file per network namespace); None: nowhere."""
    if args.checkpoint is not None:
        return Path(args.checkpoint) if args.checkpoint else None
    return CHECKPOINT_DIR / (f"checkpoint-{args.netns}" if args.netns else "checkpoint")


def apply(args: argparse.Namespace) -> int:
    """One sync: make the kernel hold the ruleset for the manifests."""
    checkpoint = _checkpoint(args)
    # Without a checkpoint the kernel must be read: do it while the manifests are built.
    unread = args.dry_run or (checkpoint is not None and checkpoint.exists())
    pending = None if unread else read_ahead(args.netns)
    wanted = desired(args)
    current = pending() if pending is not None else None
    if wanted is None:
        return 1
    ruleset, problems, state = wanted
    kernel = _kernel(args)
    if args.dry_run:
        result = sync(kernel, ruleset, dry_run=True)
        sys.stdout.write(result.script)
        return 0
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            print(f"nftproxy: this kernel or nft lacks {feature}: {error}", file=sys.stderr)
        return 2
    result = sync_with_retries(kernel, ruleset, checkpoint=checkpoint, read_already=current)
    flows = _delete_stale_flows(kernel, stale_plan(result, ruleset, serving_flows(state)))
    forgotten = _forget_affinity(kernel, result, ruleset)
    kind = "full" if result.full else "incremental"
    kind += ", from checkpoint" if result.from_checkpoint else ", read back from the kernel"
    print(f"apply: {result.summary} in {result.seconds:.3f} s ({kind}); {flows}{forgotten}")
    return status(args, problems)


def _delete_stale_flows(kernel: Libnftables, plan: StalePlan) -> str:
    """Delete stale conntrack entries; a failure is logged, never fails the sync
    (the rules are in; the flows time out on their own at worst)."""
    try:
        return f"{kernel.delete_stale_flows(plan)} stale conntrack entries deleted"
    except OSError as err:
        log.logger().warning("conntrack cleanup failed", error=str(err), entries=len(plan.keep))
        return f"conntrack cleanup failed: {err}"


def _forget_affinity(kernel: Libnftables, result: SyncResult, ruleset: Ruleset) -> str:
    """Forget the clients of removed sticky endpoints; a failure is logged only
    (their elements expire by the Service's timeout)."""
    try:
        n = affinity.forget_removed(kernel, result, ruleset)
    except (NftError, OSError) as err:
        log.logger().warning("affinity cleanup failed", error=str(err))
        return f"; affinity cleanup failed: {err}"
    return f"; {n} clients of removed sticky endpoints forgotten" if n else ""


def diff(args: argparse.Namespace) -> int:
    """Compare the ruleset for the manifests with the kernel: 0 in sync, 1 drifted."""
    pending = read_ahead(args.netns, via_nft=args.reader == "nft")
    wanted = desired(args)
    current = pending()
    if wanted is None:
        return 2
    diffs = drift(wanted[0], current, chain_comments=args.reader != "nft")
    if args.json:
        print(json.dumps(report.as_dicts(diffs), indent=1))
    else:
        sys.stdout.write(report.as_text(diffs) or "in sync\n")
    return 1 if diffs else 0


def clean(args: argparse.Namespace) -> int:
    """Remove nftproxy's tables (and kube-proxy's rules with --kube-proxy)."""
    verb = "would remove" if args.dry_run else "removed"
    gone = cleanup(
        _kernel(args), kube_proxy=args.kube_proxy, netns=args.netns, dry_run=args.dry_run
    )
    for what in gone:
        print(f"{verb} {what}")
    return 0
