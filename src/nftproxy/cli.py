"""The ``nftproxy`` command."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nftproxy import __version__, log, names
from nftproxy.config import ConfigError
from nftproxy.flags import add_node_flags, add_run_flags, settings_of
from nftproxy.gcpause import paused_gc
from nftproxy.kernel import NftError
from nftproxy.nft.errors import NetlinkError
from nftproxy.nft.render import render_script
from nftproxy.pipeline import desired, nothing_usable, status

APPLY_EXIT_CODES = """exit codes:
  0  applied as asked
  1  applied, with objects kept at their previous state or skipped (see stderr)
  2  nothing applied: input that is not Kubernetes objects, invalid objects whose
     Service cannot be told, manifests without Services over a kernel that has
     some (without --allow-empty), or an error"""


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser: no abbreviated flags (``--bind-address`` is never taken
    for ``--bind-address-hard-fail``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def add_filename_flag(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """``-f PATH``, repeatable: manifest files or folders."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        type=Path,
        required=required,
        metavar="PATH",
        help=help,
    )


def add_manifest_flags(parser: argparse.ArgumentParser) -> None:
    """Manifests in, and the node flags."""
    add_filename_flag(
        parser,
        required=True,
        help="manifest file or folder (YAML or JSON); repeatable; a Node named as "
        "this node among them gives its addresses, zone and podCIDRs, ServiceCIDRs "
        "the Service ranges",
    )
    add_node_flags(parser)
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero when any object is invalid"
    )


def add_netns_flag(parser: argparse.ArgumentParser) -> None:
    """Act inside a named network namespace instead of the current one."""
    parser.add_argument(
        "--netns", metavar="NAME", help="act in this network namespace (as with ip netns exec)"
    )


def cmd_render(args: argparse.Namespace) -> int:
    """Print the nft script the proxy would apply for the given manifests."""
    wanted = desired(settings_of(args), args.paths)
    if nothing_usable(wanted):
        return 1
    sys.stdout.write(render_script(wanted.ruleset, names.TABLE))
    return status(args.strict, wanted.problems)


def cmd_apply(args: argparse.Namespace) -> int:
    """One sync: make the kernel hold the ruleset for the manifests."""
    from nftproxy.kernelcli import apply  # noqa: PLC0415 - render does not load the kernel side

    return apply(args)


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare the ruleset for the manifests with the kernel: 0 in sync, 1 drifted."""
    from nftproxy.kernelcli import diff  # noqa: PLC0415

    return diff(args)


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove nftproxy's tables (and kube-proxy's rules with --kube-proxy)."""
    from nftproxy.kernelcli import clean  # noqa: PLC0415

    return clean(args)


def cmd_run(args: argparse.Namespace) -> int:
    """The long-running proxy."""
    from nftproxy.runcmd import cmd_run as run  # noqa: PLC0415

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The live demo of ``nftproxy run``, or a scenario through the real kernel (needs root)."""
    if args.scenario is None and not args.show_ruleset:
        from nftproxy.lab.live import run_live_demo  # noqa: PLC0415 - the lab is only for demos

        return run_live_demo()
    from nftproxy.demo import run_demo  # noqa: PLC0415

    return run_demo(args.scenario, show_ruleset=args.show_ruleset)


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    top = argparse.ArgumentParser(prog="nftproxy", description=__doc__, allow_abbrev=False)
    top.add_argument("--log-json", action="store_true", help="log JSON lines to stderr")
    top.add_argument("--version", action="version", version=f"nftproxy {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    render = sub.add_parser("render", help="print the nft ruleset for manifests (dry run)")
    add_manifest_flags(render)
    render.set_defaults(func=cmd_render)
    apply = sub.add_parser(
        "apply",
        help="make the kernel hold the ruleset (one sync)",
        description="Make the kernel hold the ruleset for the manifests, in one sync. "
        "A Service whose input is invalid (the Service, one of its EndpointSlices, a "
        "Pod with hostPorts) keeps what the kernel holds for it.",
        epilog=APPLY_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifest_flags(apply)
    add_netns_flag(apply)
    apply.add_argument(
        "--dry-run", action="store_true", help="print the transaction instead of applying it"
    )
    apply.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="where to keep what was applied, so that a restart need not read "
        "the kernel back (default /var/lib/nftproxy/checkpoint; '' for none)",
    )
    apply.add_argument(
        "--prune-invalid",
        action="store_true",
        help="remove the rules of Services whose input is invalid instead of keeping them",
    )
    apply.add_argument(
        "--allow-empty",
        action="store_true",
        help="apply manifests without any Service over a kernel that holds some (removes them all)",
    )
    apply.add_argument("--json", action="store_true", help="print the result as JSON")
    apply.set_defaults(func=cmd_apply)
    diff = sub.add_parser("diff", help="what differs between the ruleset and the kernel")
    add_manifest_flags(diff)
    add_netns_flag(diff)
    diff.add_argument("--json", action="store_true", help="print JSON")
    diff.add_argument(
        "--reader",
        choices=("netlink", "nft"),
        default="netlink",
        help="read the kernel over netlink (default), or from nft's JSON listing "
        "(slower; a second opinion)",
    )
    diff.set_defaults(func=cmd_diff, prune_invalid=False)
    clean = sub.add_parser("cleanup", help="remove nftproxy's tables and nothing else")
    add_netns_flag(clean)
    clean.add_argument(
        "--kube-proxy",
        action="store_true",
        help="also remove what kube-proxy's own --cleanup removes (its nftables tables, "
        "iptables chains, IPVS state and ipsets; never kubelet's chains)",
    )
    clean.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    clean.set_defaults(func=cmd_cleanup)
    run = sub.add_parser(
        "run", help="the long-running proxy: watch the API server, keep the kernel in sync"
    )
    add_node_flags(run)
    add_netns_flag(run)
    add_run_flags(run)
    run.set_defaults(func=cmd_run)
    explain = sub.add_parser(
        "explain", help="where a new connection goes through nftproxy's rules, and why"
    )
    add_node_flags(explain)
    add_netns_flag(explain)
    from nftproxy.explaincli import add_explain_flags, cmd_explain  # noqa: PLC0415

    add_explain_flags(explain)
    explain.set_defaults(func=cmd_explain)
    trace = sub.add_parser(
        "trace", help="the path real packets take through nftproxy's chains (nft tracing)"
    )
    add_netns_flag(trace)
    from nftproxy.tracecli import add_trace_flags, cmd_trace  # noqa: PLC0415

    add_trace_flags(trace)
    trace.set_defaults(func=cmd_trace)
    demo = sub.add_parser(
        "demo",
        help="run nftproxy run in a throw-away lab and change Services through the API "
        "(or, with --scenario, probe a scenario's ruleset)",
    )
    demo.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="probe this scenario (format of tests/conformance) instead of the live demo",
    )
    demo.add_argument(
        "--show-ruleset",
        action="store_true",
        help="probe the built-in scenario (or --scenario) and print its ruleset",
    )
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    log.configure(json=args.log_json)
    # A one-shot command makes millions of objects and no cycles: the collector is
    # paused for it. The long-running proxy pauses it only inside each sync.
    pause = contextlib.nullcontext() if args.command == "run" else paused_gc()
    try:
        with pause:
            code: int = args.func(args)
    except (ConfigError, NftError) as err:
        print(f"nftproxy: {err}", file=sys.stderr)
        return 2
    except NetlinkError as err:  # reading the kernel back failed (or never settled)
        print(f"nftproxy: reading the kernel: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
