"""``nftproxy explain``: one connection through the rules, from manifests or the kernel."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from nftproxy import names
from nftproxy.cli import add_filename_flag
from nftproxy.config import ConfigError
from nftproxy.explain import DNAT, Explainer, Outcome, summary
from nftproxy.flags import settings_of
from nftproxy.nft.model import Family, Table
from nftproxy.pipeline import desired, node_config, nothing_usable


def add_explain_flags(parser: argparse.ArgumentParser) -> None:
    """Where the rules come from, and the connection."""
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


def _table(args: argparse.Namespace, family: Family) -> Table | None:
    if args.kernel:
        from nftproxy.kernel import Libnftables  # noqa: PLC0415 - only with --kernel

        return Libnftables(getattr(args, "netns", None)).read_table(family, names.TABLE)
    wanted = desired(settings_of(args), args.paths, getattr(args, "netns", None))
    if nothing_usable(wanted):
        return None
    return next((t for t in wanted.ruleset.tables if t.family == family), None)


def cmd_explain(args: argparse.Namespace) -> int:
    """Print where a new connection goes, and why."""
    if bool(args.paths) == bool(args.kernel):
        raise ConfigError("explain: give -f manifests or --kernel (one of them)")
    try:
        dst = ipaddress.ip_address(args.dst)
        if args.src != "node":
            ipaddress.ip_address(args.src)
    except ValueError as err:
        raise ConfigError(f"explain: {err}") from None
    node = node_config(settings_of(args), getattr(args, "netns", None))
    family = Family.IP if dst.version == 4 else Family.IP6
    local = frozenset(str(ip) for ip in node.ips)
    src = args.src
    if src == "node":
        src = next((str(ip) for ip in node.ips if ip.version == dst.version), None)
        if src is None:
            raise ConfigError(f"--from node: the node has no IPv{dst.version} address")
    elif ipaddress.ip_address(src).version != dst.version:
        raise ConfigError("--from and --to must be of one IP family")
    table = _table(args, family)
    if table is None:
        raise ConfigError(f"no table {family.value} {names.TABLE} to explain")
    outcomes = Explainer(table, local).explain(src, str(dst), args.port, args.proto, args.iif)
    if args.json:
        print(json.dumps(summary(outcomes), indent=2))
    else:
        sys.stdout.write(describe(outcomes, src, str(dst), args.port, args.proto))
    return 0


def describe(outcomes: list[Outcome], src: str, dst: str, port: int, proto: str) -> str:
    """The text answer: the path of the most likely outcome, then every outcome."""
    lines = [f"{proto} {src} -> {dst} port {port}"]
    if outcomes:
        for step in outcomes[0].packet.path:
            lines.append(f"  {step.hook:<12} {step.chain}: {step.rule}")
            if step.element:
                lines.append(f"  {'':<12}   element {step.element}")
    for o in outcomes:
        pct = f"{float(o.probability) * 100:5.1f}%"
        if o.verdict == DNAT:
            where = f"DNAT to {o.packet.dst} port {o.packet.port}"
        else:
            where = {"accept": "untouched by nftproxy", "reject": "REJECT", "drop": "DROP"}.get(
                o.verdict, o.verdict
            )
        extra = ", masqueraded" if o.packet.masquerade else ""
        lines.append(f"{pct}  {where}{extra}")
    if any(o.packet.sticky for o in outcomes):
        lines.append("ClientIP affinity: the first choice is random; later connections stick")
    return "\n".join(lines) + "\n"
