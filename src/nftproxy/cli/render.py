"""``nftproxy render``: the nft script for manifests (the dry run)."""

from __future__ import annotations

import argparse
import sys

from nftproxy.cli.flags import settings_of
from nftproxy.nft.render import render_script
from nftproxy.ruleset import names
from nftproxy.ruleset.pipeline import desired, nothing_usable, status


def cmd_render(args: argparse.Namespace) -> int:
    """Print the nft script the proxy would apply for the given manifests."""
    wanted = desired(settings_of(args), args.paths)
    if nothing_usable(wanted):
        return 1
    sys.stdout.write(render_script(wanted.ruleset, names.TABLE))
    return status(args.strict, wanted.problems)
