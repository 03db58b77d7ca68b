"""``nftproxy trace``: real packets' paths through nftproxy's chains."""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
from types import FrameType

from nftproxy.diagnose.trace import Connection, describe, run_trace
from nftproxy.nft.kernel import Libnftables
from nftproxy.settings.node import ConfigError


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the marker table is removed on the way out


def cmd_trace(args: argparse.Namespace) -> int:
    """Trace packets until --count of them or --timeout."""
    try:
        src, dst = ipaddress.ip_address(args.src), ipaddress.ip_address(args.dst)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if src.version != dst.version:
        raise ConfigError("--from and --to must be of one IP family")
    if args.port is not None and args.proto is None:
        args.proto = "tcp"

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)  # a closed terminal: the table goes too
    conn = Connection(str(src), str(dst), args.port, args.proto)
    walks = run_trace(
        Libnftables(args.netns),
        args.netns,
        conn,
        count=args.count,
        timeout=args.timeout,
        on_ready=lambda: print("tracing: send the traffic now", file=sys.stderr),
    )
    if args.json:
        print(json.dumps([w.as_json() for w in walks], indent=2))
    else:
        sys.stdout.write(describe(walks))
    return 0
