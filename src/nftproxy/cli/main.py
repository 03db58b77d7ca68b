"""The ``nftproxy`` command: the parser of every command (:mod:`.commands`), and the
entry point, which loads the module of the command given (``nftproxy.cli.NAME``,
whose ``cmd_NAME`` runs it)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence

from nftproxy import __version__, log
from nftproxy.cli.commands import add_commands
from nftproxy.cli.flags import SubParser
from nftproxy.nft.errors import NetlinkError, NoSuchNetnsError
from nftproxy.nft.gcpause import paused_gc
from nftproxy.nft.kernel import NftError
from nftproxy.settings.node import ConfigError


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    top = argparse.ArgumentParser(
        prog="nftproxy",
        description="A kube-proxy replacement on nftables.",
        allow_abbrev=False,
    )
    top.add_argument("--log-json", action="store_true", help="log JSON lines to stderr")
    top.add_argument("--version", action="version", version=f"nftproxy {__version__}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=SubParser)
    add_commands(sub)
    return top


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs a command: ``cmd_NAME`` of ``nftproxy.cli.NAME``."""
    module = importlib.import_module(f"nftproxy.cli.{name}")
    run: Callable[[argparse.Namespace], int] = getattr(module, f"cmd_{name}")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    log.configure(json=args.log_json)
    # A one-shot command makes millions of objects and no cycles: the collector is
    # paused for it. The long-running proxy pauses it only inside each sync.
    pause = contextlib.nullcontext() if args.command == "run" else paused_gc()
    try:
        with pause:
            code = command(args.command)(args)
    except (ConfigError, NftError, NoSuchNetnsError) as err:
        print(f"nftproxy: {err}", file=sys.stderr)
        return 2
    except NetlinkError as err:  # reading the kernel back failed (or never settled)
        print(f"nftproxy: reading the kernel: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
