"""``nftproxy run``: the long-running proxy a node runs in place of kube-proxy, and
its one-shot actions (``--check-config``, ``--write-config-to``, ``--cleanup``,
``--init-only``, ``--version``)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from nftproxy import __version__, log
from nftproxy.cli.flags import checkpoint_of, is_on, settings_of
from nftproxy.controller.proxy import Proxy, start_proxy
from nftproxy.nft.kernel import Libnftables
from nftproxy.settings import Settings, kubeproxy
from nftproxy.sync import sysctls
from nftproxy.sync.cleanup import TakeOver, cleanup
from nftproxy.sync.features import missing_features

STARTING_GC = (1_000_000, 100, 100)
"""The cyclic collector's thresholds until the first sync. The lists and the
checkpoint make a few million objects that all live on, and at Python's defaults
(700, 10, 10) the collector walks them again and again as they grow: about 1 s of a
restart at 10,000 Services, 40% of it. It still runs meanwhile (every million
allocations); after the first sync what lives is frozen out of its scans
(``gc.freeze``) and the thresholds go back to what they were."""

DEBUG_VERBOSITY = 4
"""klog's -v at which kube-proxy logs debug detail."""


def checked_settings(settings: Settings) -> dict[str, Any]:
    """What ``--check-config`` prints: the settings ``run`` runs with, and the
    sysctls they make it write."""
    return {**settings.as_dict(), "sysctls": sysctls.wanted(settings)}


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    if args.version:
        print(f"nftproxy {__version__}")
        return 0
    settings = settings_of(args)
    log.configure(
        json=args.log_json or settings.log_format == "json",
        level=logging.DEBUG if settings.log_verbosity >= DEBUG_VERBOSITY else logging.INFO,
    )
    if _one_shot(args, settings):
        return 0
    dry_run = is_on(args, "dry_run")
    # Shadow mode: kube-proxy, beside it, owns the sysctls.
    failed = [] if dry_run else sysctls.apply(sysctls.wanted(settings), args.netns)
    if is_on(args, "init_only"):
        # An init container that could not do its one job fails, as kube-proxy does;
        # only the table size may be read-only (so it is in a network namespace).
        return 1 if sysctls.fatal(failed) else 0
    raise_open_files_limit()
    thresholds = gc.get_threshold()
    gc.set_threshold(*STARTING_GC)
    kernel = Libnftables(args.netns)
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            log.logger().error("this kernel or nft lacks a feature", feature=feature, error=error)
        return 2
    take_over = None if dry_run else TakeOver(kernel, args.netns)
    proxy = start_proxy(
        settings, kernel, dry_run=dry_run, netns=args.netns, checkpoint=checkpoint_of(args)
    )
    received = _on_signals(proxy)

    def after_first() -> None:
        gc.freeze()  # what the first full load leaves is never garbage
        gc.set_threshold(*thresholds)
        if take_over is not None:
            take_over.after_first_sync()

    log.logger().info(
        "started", node=proxy.loop.base.name, healthz=proxy.healthz_port, metrics=proxy.metrics_port
    )
    try:
        proxy.loop.run(proxy.stop, proxy.ready, after_first=after_first)
        kept = proxy.loop.keep()
    finally:
        proxy.close()
    log.logger().info(
        "stopped; the rules stay in the kernel",
        signal=",".join(received) or None,
        checkpoint=str(proxy.loop.checkpoint) if kept else None,
    )
    return 0


def _one_shot(args: argparse.Namespace, settings: Settings) -> bool:
    """--write-config-to, --check-config and --cleanup: done, and nothing runs after."""
    if args.write_config_to:
        write_config(settings, Path(args.write_config_to))
    elif is_on(args, "check_config"):
        print(json.dumps(checked_settings(settings), indent=2, default=str))
    elif is_on(args, "cleanup"):
        for what in cleanup(Libnftables(args.netns), kube_proxy=True, netns=args.netns):
            print(f"removed {what}")
    else:
        return False
    return True


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one, as Go raises it for
    kube-proxy (a container starts at 1024: every listener's clients share it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def write_config(settings: Settings, path: Path) -> None:
    """--write-config-to: the effective KubeProxyConfiguration, every field written out."""
    import yaml  # noqa: PLC0415 - only for this action

    path.write_text(yaml.safe_dump(kubeproxy.document(settings), sort_keys=True))
    log.logger().info("wrote the configuration", file=str(path))


def _on_signals(proxy: Proxy) -> list[str]:
    """SIGTERM and SIGINT end the loop after the sync in flight (the loop looks at
    its ``stopping`` flag at least every half second). The handler takes no lock:
    it runs in the main thread between two bytecodes, perhaps while that thread
    holds the very lock (a logger's, an Event's) it would wait for."""
    received: list[str] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        proxy.loop.stopping = True

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return received
