"""The commands that touch the kernel: apply, diff, cleanup (loaded only when used)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nftproxy import affinity, log, report
from nftproxy.build import fixed_table
from nftproxy.cleanup import cleanup
from nftproxy.conntrack import StalePlan
from nftproxy.features import missing_features
from nftproxy.flags import settings_of
from nftproxy.keep import ENTRY_SETS, Kept, Owner, keep_owners
from nftproxy.kernel import Libnftables, NftError
from nftproxy.nft.model import Family, Ruleset, Table
from nftproxy.objects import Pod, Service
from nftproxy.pipeline import Wanted, desired, has_errors, nothing_usable
from nftproxy.problems import Problem
from nftproxy.state import serving_flows
from nftproxy.sync import (
    SyncResult,
    desired_tables,
    drift,
    read_ahead,
    read_tables,
    stale_plan,
    sync,
    sync_with_retries,
)


def _kernel(args: argparse.Namespace) -> Libnftables:
    return Libnftables(args.netns)


CHECKPOINT_DIR = Path("/var/lib/nftproxy")


def _checkpoint(args: argparse.Namespace) -> Path | None:
    """Where apply keeps what it applied (one file per network namespace); None: nowhere."""
    if args.checkpoint is not None:
        return Path(args.checkpoint) if args.checkpoint else None
    return CHECKPOINT_DIR / (f"checkpoint-{args.netns}" if args.netns else "checkpoint")


def apply(args: argparse.Namespace) -> int:
    """One sync: make the kernel hold the ruleset for the manifests.

    Exit 0: applied as asked; 1: applied, with objects kept at what the kernel held
    or skipped; 2: nothing applied (input that is not Kubernetes objects, a refused
    empty state, an error)."""
    checkpoint = _checkpoint(args)
    # Without a checkpoint the kernel must be read: do it while the manifests are built.
    unread = args.dry_run or (checkpoint is not None and checkpoint.exists())
    pending = None if unread else read_ahead(args.netns)
    try:
        wanted = desired(settings_of(args), args.paths, args.netns)
    finally:
        current = pending() if pending is not None else None
    kernel = _kernel(args)
    if wanted.loaded is not None and wanted.loaded.unowned and not args.prune_invalid:
        for problem in wanted.loaded.unowned:
            print(f"nftproxy: {problem}", file=sys.stderr)
        print(
            "nftproxy: nothing applied: what these invalid objects would change cannot be "
            "told (--prune-invalid applies without them)",
            file=sys.stderr,
        )
        return 2
    kept_owners = _kept_owners(args, wanted)
    if current is None and (kept_owners or not _has_owners(wanted)):
        current = read_tables(kernel)
    empty = current is not None and not _has_owners(wanted) and _holds_services(current)
    if empty and not args.allow_empty:
        print(
            "nftproxy: nothing applied: the manifests hold no Service but the kernel "
            "does; --allow-empty removes them all (or nftproxy cleanup)",
            file=sys.stderr,
        )
        return 2
    ruleset, kept = _with_kept(wanted, current, kept_owners)
    if args.dry_run:
        result = sync(kernel, ruleset, dry_run=True, read_already=current)
        sys.stdout.write(result.script)
        return _exit_code(wanted, kept)
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            print(f"nftproxy: this kernel or nft lacks {feature}: {error}", file=sys.stderr)
        return 2
    result = sync_with_retries(kernel, ruleset, checkpoint=checkpoint, read_already=current)
    flows = _delete_stale_flows(kernel, stale_plan(result, ruleset, serving_flows(wanted.state)))
    forgotten = _forget_affinity(kernel, result, ruleset)
    code = _exit_code(wanted, kept)
    if args.json:
        print(json.dumps(_report(result, wanted, kept, flows + forgotten, code), indent=1))
        return code
    kind = "full" if result.full else "incremental"
    kind += ", from checkpoint" if result.from_checkpoint else ", read back from the kernel"
    line = f"apply: {result.summary} in {result.seconds:.3f} s ({kind}); {flows}{forgotten}"
    print(line + _kept_text(wanted, kept))
    return code


def _kept_owners(args: argparse.Namespace, wanted: Wanted) -> dict[Owner, list[Problem]]:
    """The Services and Pods to keep at the kernel's state (none with --prune-invalid)."""
    if args.prune_invalid or wanted.loaded is None:
        return {}
    return dict(wanted.loaded.invalid)


def _has_owners(wanted: Wanted) -> bool:
    """Whether the manifests hold any Service or Pod (valid or not)."""
    loaded = wanted.loaded
    if loaded is None:
        return True
    return bool(loaded.invalid) or any(isinstance(o, (Service, Pod)) for _, o in loaded.objects)


def _holds_services(current: dict[Family, Table | None]) -> bool:
    """Whether the kernel's tables hold any Service entry."""
    return any(
        s.elements
        for t in current.values()
        if t is not None
        for s in t.sets
        if s.name in ENTRY_SETS
    )


def _with_kept(
    wanted: Wanted, current: dict[Family, Table | None] | None, owners: dict[Owner, list[Problem]]
) -> tuple[Ruleset, Kept]:
    """The ruleset with the owners' parts as current holds them."""
    if not owners or current is None:
        return wanted.ruleset, Kept({})
    empty = {fs.node.family: fixed_table(fs.node) for fs in wanted.state.families}
    tables, kept = keep_owners(desired_tables(wanted.ruleset), current, owners, empty)
    present = tuple(t for t in tables.values() if t is not None)
    absent = tuple(f for f, t in tables.items() if t is None)
    return Ruleset(present, absent), kept


def _exit_code(wanted: Wanted, kept: Kept) -> int:
    """0 when everything was applied as asked, 1 when something was kept or skipped."""
    return 1 if kept.entries or has_errors(wanted.problems) else 0


def _kept_text(wanted: Wanted, kept: Kept) -> str:
    """What the summary line says of the owners kept and the objects skipped."""
    if not kept.entries:
        return ""
    owners = ", ".join(f"{ns}/{name}" for ns, name in sorted(kept.entries))
    return f"; kept at their previous state (invalid input): {owners}"


def _report(
    result: SyncResult, wanted: Wanted, kept: Kept, cleanup: str, code: int
) -> dict[str, object]:
    """apply's result for --json."""
    invalid = wanted.loaded.invalid if wanted.loaded is not None else {}
    return {
        "added": result.summary.added,
        "changed": result.summary.changed,
        "removed": result.summary.removed,
        "seconds": round(result.seconds, 4),
        "full": result.full,
        "from_checkpoint": result.from_checkpoint,
        "kept": [
            {
                "owner": f"{ns}/{name}",
                "entries": n,
                "because": [str(p) for p in invalid.get((ns, name), [])],
            }
            for (ns, name), n in sorted(kept.entries.items())
        ],
        "skipped": [str(p) for p in wanted.problems if not p.note],
        "cleanup": cleanup,
        "exit": code,
    }


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
    try:
        wanted = desired(settings_of(args), args.paths, args.netns)
    finally:
        current = pending()
    if nothing_usable(wanted):
        return 2
    # An invalid object's Service is compared as the kernel holds it: its problem is
    # on stderr, and its rules are not shown as rules to remove.
    ruleset, _ = _with_kept(wanted, current, _kept_owners(args, wanted))
    diffs = drift(ruleset, current, chain_comments=args.reader != "nft")
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
