"""Every command's parser, and nothing of what the commands run: ``main`` builds the
parser from here and loads only the module of the command given (``render`` never
loads the API client, the lab or the servers: 0.2 s of a one-shot command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nftproxy.cli.flags import (
    Subparsers,
    add_checkpoint_flag,
    add_filename_flag,
    add_manifest_flags,
    add_netns_flag,
    add_node_flags,
    add_run_flags,
)

EXIT_CODES = """exit codes:
  0  applied as asked
  1  applied, with objects kept at their previous state or skipped (see stderr)
  2  nothing applied: input that is not Kubernetes objects, invalid objects whose
     Service cannot be told, manifests without Services over a kernel that has
     some (without --allow-empty), or an error"""


def add_commands(sub: Subparsers) -> None:
    """Every command's parser, in the order ``--help`` lists them."""
    for add in (
        render_command,
        apply_command,
        diff_command,
        cleanup_command,
        run_command,
        explain_command,
        trace_command,
        demo_command,
    ):
        add(sub)


def add_prune_flag(parser: argparse.ArgumentParser) -> None:
    """--prune-invalid: Services with invalid input are not kept."""
    parser.add_argument(
        "--prune-invalid",
        action="store_true",
        help="remove the rules of Services whose input is invalid instead of keeping them",
    )


def render_command(sub: Subparsers) -> None:
    """``render`` and its flags."""
    parser = sub.add_parser("render", help="print the nft ruleset for manifests (dry run)")
    add_manifest_flags(parser)


def apply_command(sub: Subparsers) -> None:
    """``apply`` and its flags."""
    parser = sub.add_parser(
        "apply",
        help="make the kernel hold the ruleset (one sync)",
        description="Make the kernel hold the ruleset for the manifests, in one sync. "
        "A Service whose input is invalid (the Service, one of its EndpointSlices, a "
        "Pod with hostPorts) keeps what the kernel holds for it.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_manifest_flags(parser)
    add_netns_flag(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the transaction instead of applying it"
    )
    add_checkpoint_flag(parser)
    add_prune_flag(parser)
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="apply manifests without any Service over a kernel that holds some (removes them all)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def diff_command(sub: Subparsers) -> None:
    """``diff`` and its flags."""
    parser = sub.add_parser("diff", help="what differs between the ruleset and the kernel")
    add_manifest_flags(parser)
    add_netns_flag(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--reader",
        choices=("netlink", "nft"),
        default="netlink",
        help="read the kernel over netlink (default), or from nft's JSON listing "
        "(slower; a second opinion)",
    )
    parser.set_defaults(prune_invalid=False)


def cleanup_command(sub: Subparsers) -> None:
    """``cleanup`` and its flags."""
    parser = sub.add_parser("cleanup", help="remove nftproxy's tables and nothing else")
    add_netns_flag(parser)
    parser.add_argument(
        "--kube-proxy",
        action="store_true",
        help="also remove what kube-proxy's own --cleanup removes (its nftables tables, "
        "iptables chains, IPVS state and ipsets; never kubelet's chains)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )


def run_command(sub: Subparsers) -> None:
    """``run`` and kube-proxy's flags."""
    parser = sub.add_parser(
        "run", help="the long-running proxy: watch the API server, keep the kernel in sync"
    )
    add_node_flags(parser)
    add_netns_flag(parser)
    add_checkpoint_flag(parser)
    add_run_flags(parser)


def explain_command(sub: Subparsers) -> None:
    """``explain`` and its flags: where the rules come from, and the connection."""
    parser = sub.add_parser(
        "explain", help="where a new connection goes through nftproxy's rules, and why"
    )
    add_node_flags(parser)
    add_netns_flag(parser)
    add_filename_flag(
        parser, required=False, help="manifests, as for render (the ruleset render would print)"
    )
    parser.add_argument(
        "--kernel", action="store_true", help="the tables in the kernel, read back over netlink"
    )
    parser.add_argument("--from", dest="src", required=True, metavar="ADDR|node")
    parser.add_argument("--to", dest="dst", required=True, metavar="ADDR")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    parser.add_argument(
        "--iif",
        default="",
        metavar="NAME",
        help="the interface the connection arrives on (matters with the interface "
        "detectors of --detect-local-mode)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(strict=False)


def trace_command(sub: Subparsers) -> None:
    """``trace`` and its flags: the packets to trace, and how long."""
    parser = sub.add_parser(
        "trace", help="the path real packets take through nftproxy's chains (nft tracing)"
    )
    add_netns_flag(parser)
    parser.add_argument("--from", dest="src", required=True, metavar="ADDR")
    parser.add_argument("--to", dest="dst", required=True, metavar="ADDR")
    parser.add_argument("--port", type=int)
    parser.add_argument("--proto", choices=("tcp", "udp", "sctp"))
    parser.add_argument("--count", type=int, default=1, help="packets to trace (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def demo_command(sub: Subparsers) -> None:
    """``demo`` and its flags."""
    parser = sub.add_parser(
        "demo",
        help="run nftproxy run in a throw-away lab and change Services through the API "
        "(or, with --scenario, probe a scenario's ruleset)",
    )
    parser.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="probe this scenario (format of tests/conformance) instead of the live demo",
    )
    parser.add_argument(
        "--show-ruleset",
        action="store_true",
        help="probe the built-in scenario (or --scenario) and print its ruleset",
    )
