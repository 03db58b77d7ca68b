"""``nftproxy demo``: the live demo of ``nftproxy run`` in a throw-away lab, or a
scenario's ruleset probed through the real kernel (needs root)."""

from __future__ import annotations

import argparse

from nftproxy.lab.demo import run_demo
from nftproxy.lab.live import run_live_demo


def cmd_demo(args: argparse.Namespace) -> int:
    """The live demo, or a scenario through the real kernel."""
    if args.scenario is None and not args.show_ruleset:
        return run_live_demo()
    return run_demo(args.scenario, show_ruleset=args.show_ruleset)
