"""``nftproxy apply``: one sync of manifests into the kernel, never removing what
it could not read.

Exit 0: applied as asked; 1: applied, with Services kept at what the kernel held or
objects skipped; 2: nothing applied (input that is not Kubernetes objects, invalid
objects whose Service cannot be told, a refused empty state, an error)."""

from __future__ import annotations

import argparse
import json
import sys

from nftproxy.cli.flags import checkpoint_of, settings_of
from nftproxy.k8s.objects import Pod, Service
from nftproxy.k8s.problems import Problem
from nftproxy.nft.kernel import Libnftables
from nftproxy.ruleset.keep import Kept, Owner, holds_services, kept_ruleset
from nftproxy.ruleset.pipeline import Wanted, desired, has_errors
from nftproxy.sync.after import AfterSync, after_sync
from nftproxy.sync.apply import SyncResult, preview, read_ahead, read_tables, sync_with_retries
from nftproxy.sync.features import missing_features


def cmd_apply(args: argparse.Namespace) -> int:
    """One sync: make the kernel hold the ruleset for the manifests."""
    checkpoint = checkpoint_of(args)
    # Without a checkpoint the kernel must be read: do it while the manifests are built.
    unread = args.dry_run or (checkpoint is not None and checkpoint.exists())
    pending = None if unread else read_ahead(args.netns)
    try:
        wanted = desired(settings_of(args), args.paths, args.netns)
    finally:
        current = pending() if pending is not None else None
    kernel = Libnftables(args.netns)
    if wanted.loaded is not None and wanted.loaded.unowned and not args.prune_invalid:
        for problem in wanted.loaded.unowned:
            print(f"nftproxy: {problem}", file=sys.stderr)
        print(
            "nftproxy: nothing applied: what these invalid objects would change cannot be "
            "told (--prune-invalid applies without them)",
            file=sys.stderr,
        )
        return 2
    owners = kept_owners(args, wanted)
    if current is None and (owners or not _has_owners(wanted)):
        current = read_tables(kernel)
    empty = current is not None and not _has_owners(wanted) and holds_services(current)
    if empty and not args.allow_empty:
        print(
            "nftproxy: nothing applied: the manifests hold no Service but the kernel "
            "does; --allow-empty removes them all (or nftproxy cleanup)",
            file=sys.stderr,
        )
        return 2
    ruleset, kept = kept_ruleset(wanted.ruleset, wanted.state, current, owners)
    if args.dry_run:
        sys.stdout.write(preview(kernel, ruleset, current=current).script)
        return _exit_code(wanted, kept)
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            print(f"nftproxy: this kernel or nft lacks {feature}: {error}", file=sys.stderr)
        return 2
    result = sync_with_retries(kernel, ruleset, checkpoint=checkpoint, current=current)
    after = after_sync(kernel, result, ruleset, wanted.state)
    code = _exit_code(wanted, kept)
    if args.json:
        print(json.dumps(_report(result, wanted, kept, after, code), indent=1))
        return code
    kind = "full" if result.full else "incremental"
    kind += ", from checkpoint" if result.from_checkpoint else ", read back from the kernel"
    line = f"apply: {result.summary} in {result.seconds:.3f} s ({kind}); {after}"
    print(line + _kept_text(kept))
    return code


def kept_owners(args: argparse.Namespace, wanted: Wanted) -> dict[Owner, list[Problem]]:
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


def _exit_code(wanted: Wanted, kept: Kept) -> int:
    """0 when everything was applied as asked, 1 when something was kept or skipped."""
    return 1 if kept.entries or has_errors(wanted.problems) else 0


def _kept_text(kept: Kept) -> str:
    """What the summary line says of the owners kept."""
    if not kept.entries:
        return ""
    owners = ", ".join(f"{ns}/{name}" for ns, name in sorted(kept.entries))
    return f"; kept at their previous state (invalid input): {owners}"


def _report(
    result: SyncResult, wanted: Wanted, kept: Kept, after: AfterSync, code: int
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
        "conntrack_deleted": after.deleted,
        "affinity_forgotten": after.forgotten,
        "cleanup_failures": list(after.failures),
        "exit": code,
    }
