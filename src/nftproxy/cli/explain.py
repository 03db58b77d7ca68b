"""``nftproxy explain``: one connection through the rules, from manifests or the kernel."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from nftproxy.cli.flags import (
    settings_of,
)
from nftproxy.diagnose.describe import describe
from nftproxy.diagnose.explain import Explainer, summary
from nftproxy.nft.kernel import Counters, Libnftables
from nftproxy.nft.model import Family, Table
from nftproxy.ruleset import names
from nftproxy.ruleset.pipeline import desired, nothing_usable
from nftproxy.settings import Settings
from nftproxy.settings.node import ConfigError, node_config


def _table(args: argparse.Namespace, settings: Settings, family: Family) -> Table | None:
    if args.kernel:
        return Libnftables(getattr(args, "netns", None)).read_table(family, names.TABLE)
    wanted = desired(settings, args.paths, getattr(args, "netns", None))
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
    settings = settings_of(args)  # once: resolving it logs its warnings
    node = node_config(settings, getattr(args, "netns", None))
    family = Family.IP if dst.version == 4 else Family.IP6
    local = frozenset(str(ip) for ip in node.ips)
    src = args.src
    if src == "node":
        src = next((str(ip) for ip in node.ips if ip.version == dst.version), None)
        if src is None:
            raise ConfigError(f"--from node: the node has no IPv{dst.version} address")
    elif ipaddress.ip_address(src).version != dst.version:
        raise ConfigError("--from and --to must be of one IP family")
    table = _table(args, settings, family)
    if table is None:
        raise ConfigError(f"no table {family.value} {names.TABLE} to explain")
    outcomes = Explainer(table, local).explain(src, str(dst), args.port, args.proto, args.iif)
    answer = summary(outcomes)
    counted = None
    if args.kernel and isinstance(answer["service"], str) and counts(table, answer["service"]):
        counted = counters(getattr(args, "netns", None), family, answer["service"])
    if args.json:
        print(json.dumps({**answer, "counters": counted}, indent=2))
    else:
        sys.stdout.write(describe(outcomes, src, str(dst), args.port, args.proto))
        if counted is not None:
            print(
                f"counted by the kernel for {answer['service']} ({family.value}, every entry):"
                f" {counted['new']} new connections, {counted['rejected']} refused"
            )
    return 0


def counts(table: Table, comment: str) -> bool:
    """Whether the kernel counts the entries so commented: a Service port's, with
    counters on (a Pod's hostPort is not counted)."""
    if not any(s.name == names.SERVICE_COUNTERS for s in table.sets):
        return False  # counting is off
    counted = (names.SERVICE_COUNTERS, names.NO_ENDPOINT_SERVICES)
    return any(e.comment == comment for s in table.sets if s.name in counted for e in s.elements)


def counters(netns: str | None, family: Family, comment: str) -> dict[str, int]:
    """What a Service port's entries counted, read from the kernel."""
    reader = Counters(netns)
    try:
        new = reader.read(family, names.TABLE, names.SERVICE_COUNTERS)
        rejected = reader.read(family, names.TABLE, names.NO_ENDPOINT_SERVICES)
    finally:
        reader.close()
    return {
        "new": sum(c.packets for c in new if c.comment == comment),
        "rejected": sum(c.packets for c in rejected if c.comment == comment),
    }
