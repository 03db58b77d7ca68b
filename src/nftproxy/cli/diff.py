"""``nftproxy diff``: what differs between the ruleset for manifests and the kernel.
Exit 0 in sync, 1 drifted, 2 on error."""

from __future__ import annotations

import argparse
import json
import sys

from nftproxy.cli.apply import kept_owners
from nftproxy.cli.flags import settings_of
from nftproxy.ruleset.keep import kept_ruleset
from nftproxy.ruleset.pipeline import desired, nothing_usable
from nftproxy.sync import report
from nftproxy.sync.apply import drift, read_ahead


def cmd_diff(args: argparse.Namespace) -> int:
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
    owners = kept_owners(args, wanted)
    ruleset, _ = kept_ruleset(wanted.ruleset, wanted.state, current, owners)
    diffs = drift(ruleset, current, chain_comments=args.reader != "nft")
    if args.json:
        print(json.dumps(report.as_dicts(diffs), indent=1))
    else:
        sys.stdout.write(report.as_text(diffs) or "in sync\n")
    return 1 if diffs else 0
