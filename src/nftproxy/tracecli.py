"""``nftproxy trace``: real packets' paths through nftproxy's chains."""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
from types import FrameType

from nftproxy.config import ConfigError
from nftproxy.trace import Connection, describe, run_trace


def add_trace_flags(parser: argparse.ArgumentParser) -> None:
    """The packets to trace, and how long."""
    parser.add_argument("--from", dest="src", required=True, metavar="ADDR")
    parser.add_argument("--to", dest="dst", required=True, metavar="ADDR")
    parser.add_argument("--port", type=int)
    parser.add_argument("--proto", choices=("tcp", "udp", "sctp"))
    parser.add_argument("--count", type=int, default=1, help="packets to trace (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON")


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
    from nftproxy.kernel import Libnftables  # noqa: PLC0415

    signal.signal(signal.SIGTERM, _interrupt)
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
