"""``nftproxy cleanup``: remove nftproxy's tables (and kube-proxy's rules with
``--kube-proxy``), nothing else."""

from __future__ import annotations

import argparse

from nftproxy.nft.kernel import Libnftables
from nftproxy.sync.cleanup import cleanup


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove nftproxy's tables (and kube-proxy's rules with --kube-proxy)."""
    verb = "would remove" if args.dry_run else "removed"
    kernel = Libnftables(args.netns)
    for what in cleanup(kernel, kube_proxy=args.kube_proxy, netns=args.netns, dry_run=args.dry_run):
        print(f"{verb} {what}")
    return 0
