"""The flags of ``nftproxy run`` (kube-proxy's), apart from the heavy machinery
behind them: building the command-line parser imports no kubernetes client."""

from __future__ import annotations

import argparse

from nftproxy.config import ConfigError
from nftproxy.kubeproxyconfig import parse_duration

HEALTHZ_DEFAULT = "0.0.0.0:10256"
METRICS_DEFAULT = "127.0.0.1:10249"


def duration(text: str) -> float:
    """A flag's Go duration (``1s``, ``500ms``, ``0``)."""
    try:
        return parse_duration(text, "value")
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """kube-proxy's flags for the long-running proxy."""
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster)")
    parser.add_argument("--master", metavar="URL", help="API server URL (overrides kubeconfig)")
    parser.add_argument(
        "--healthz-bind-address",
        metavar="HOST:PORT",
        help=f"default {HEALTHZ_DEFAULT}; '' for none",
    )
    parser.add_argument(
        "--metrics-bind-address",
        metavar="HOST:PORT",
        help=f"default {METRICS_DEFAULT}; '' for none",
    )
    parser.add_argument(
        "--bind-address-hard-fail",
        action="store_true",
        default=None,
        help="exit when a server cannot bind",
    )
    parser.add_argument(
        "--min-sync-period",
        type=duration,
        metavar="DURATION",
        help="at most one sync per period (default 1s; 0 allowed)",
    )
    parser.add_argument(
        "--sync-period",
        type=duration,
        metavar="DURATION",
        help="a sync at least this often (default 30s)",
    )
    parser.add_argument(
        "--drift-check-period",
        type=duration,
        metavar="DURATION",
        help="read the kernel back this often and repair drift (default 60s; 0: never)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run the whole loop, print every transaction instead of applying it",
    )
    parser.add_argument(
        "--init-only", action="store_true", help="set the conntrack sysctls and exit"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="parse and validate --config and the flags, print the settings and exit",
    )
    parser.add_argument(
        "--cleanup", action="store_true", help="remove nftproxy's and kube-proxy's rules and exit"
    )
