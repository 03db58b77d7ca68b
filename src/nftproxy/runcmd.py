"""``nftproxy run``: the long-running proxy a node runs in place of kube-proxy.

Threads: one reflector per watched resource (they only record changes), one
asyncio thread for every HTTP listener, and the main thread, which runs the
sync loop. Nothing forks. The cyclic garbage collector runs as usual, paused
only inside a sync (bounded), and what survives the first full load is frozen
out of its scans (``gc.freeze``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from nftproxy import __version__, log, sysctls
from nftproxy.api.cache import Cache
from nftproxy.api.client import RateLimiter, api_client, serves_service_cidrs, watched
from nftproxy.api.reflector import Reflector
from nftproxy.cleanup import cleanup
from nftproxy.config import ConfigError
from nftproxy.features import missing_features
from nftproxy.flags import is_on, settings_of
from nftproxy.kernel import Kernel, Libnftables
from nftproxy.loop import Loop, Timing
from nftproxy.pipeline import node_config
from nftproxy.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.serve.http import HttpServers
from nftproxy.serve.metrics import Metrics
from nftproxy.settings import Settings, kubeproxy

DEBUG_VERBOSITY = 4
"""klog's -v at which kube-proxy logs debug detail."""


def _split_host_port(text: str) -> tuple[str, int]:
    """A validated ``IP:port`` (``[IPv6]:port``) address."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Proxy:
    """The running parts, for ``run`` and for tests that drive it in-process."""

    loop: Loop
    cache: Cache
    reflectors: list[Reflector]
    servers: HttpServers
    health: ProxyHealth
    metrics: Metrics
    stop: threading.Event
    healthz_port: int | None = None
    metrics_port: int | None = None

    def ready(self) -> bool:
        """Every list has completed once."""
        return all(r.synced.is_set() for r in self.reflectors)

    def start(self) -> None:
        """Start the reflectors."""
        for r in self.reflectors:
            threading.Thread(target=r.run, name=f"watch-{r.what.kind}", daemon=True).start()

    def close(self) -> None:
        """Stop watching and serving (the rules stay)."""
        self.stop.set()
        self.servers.close_all()


def timing(settings: Settings) -> Timing:
    """The loop's periods."""
    return Timing(
        min_sync=settings.min_sync_period,
        sync_period=settings.sync_period,
        drift_period=settings.drift_check_period or float("inf"),
    )


def checked_settings(settings: Settings) -> dict[str, Any]:
    """What ``--check-config`` prints: the settings ``run`` runs with, and the
    sysctls they make it write."""
    return {**settings.as_dict(), "sysctls": sysctls.wanted(settings)}


def build_proxy(
    settings: Settings, kernel: Kernel, *, dry_run: bool = False, netns: str | None = None
) -> Proxy:
    """Everything ``run`` runs, wired, not started."""
    base = node_config(settings, netns)
    metrics = Metrics()
    periods = timing(settings)
    health = ProxyHealth(2 * periods.sync_period, metrics)
    servers = HttpServers()
    stop = threading.Event()
    loop = Loop(
        kernel,
        Cache(base.name),
        base,
        timing=periods,
        metrics=metrics,
        health=health,
        # In shadow mode (--dry-run beside kube-proxy) its healthCheckNodePorts are kube-proxy's.
        services=None if dry_run else ServiceHealthServers(servers, health),
        detect_local=settings.detect_local_mode,
        dry_run=dry_run,
    )
    loop.cache.on_change = loop.changed
    api = api_client(master=settings.master, kubeconfig=settings.kubeconfig)
    limiter = RateLimiter(settings.qps, settings.burst)
    what = watched(
        api,
        base.name,
        host_ports=base.host_ports,
        service_cidrs=serves_service_cidrs(api),
        limiter=limiter,
    )
    reflectors = [Reflector(w, loop.cache, stop) for w in what]
    return Proxy(loop, loop.cache, reflectors, servers, health, metrics, stop)


def _listen(proxy: Proxy, settings: Settings) -> None:
    """Open /healthz+/livez and /metrics; a bind failure is fatal only with
    bindAddressHardFail, as in kube-proxy."""
    hard = settings.bind_address_hard_fail
    for what, address in (
        ("healthz", settings.healthz_bind_address),
        ("metrics", settings.metrics_bind_address),
    ):
        if not address:
            continue
        host, port = _split_host_port(address)
        if what == "healthz":
            handler = proxy.health.healthz
        else:
            from nftproxy.serve.http import Response  # noqa: PLC0415

            def handler(path: str) -> Response:
                if path != "/metrics":
                    return Response(404, b"404 page not found\n")
                return Response(
                    200, proxy.metrics.exposition(), {"Content-Type": "text/plain; version=0.0.4"}
                )

        try:
            bound = proxy.servers.listen(host, port, handler)
        except OSError as err:
            log.logger().error(f"{what} server cannot bind", address=address, error=str(err))
            if hard:
                raise ConfigError(f"{what} bind address {address}: {err}") from None
            continue
        setattr(proxy, f"{what}_port", bound)


def start_proxy(
    settings: Settings, kernel: Kernel, *, dry_run: bool = False, netns: str | None = None
) -> Proxy:
    """Build the proxy, open its servers and start watching; the loop is the caller's."""
    proxy = build_proxy(settings, kernel, dry_run=dry_run, netns=netns)
    proxy.servers.__enter__()
    try:
        _listen(proxy, settings)
    except BaseException:
        proxy.close()
        raise
    proxy.start()
    return proxy


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
    sysctls.apply(sysctls.wanted(settings), args.netns)
    if is_on(args, "init_only"):
        return 0
    kernel = Libnftables(args.netns)
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            log.logger().error("this kernel or nft lacks a feature", feature=feature, error=error)
        return 2
    proxy = start_proxy(settings, kernel, dry_run=is_on(args, "dry_run"), netns=args.netns)
    received = _on_signals(proxy)
    log.logger().info(
        "started", node=proxy.loop.base.name, healthz=proxy.healthz_port, metrics=proxy.metrics_port
    )
    try:
        proxy.loop.run(proxy.stop, proxy.ready, after_first=gc.freeze)
    finally:
        proxy.close()
    log.logger().info("stopped; the rules stay in the kernel", signal=",".join(received) or None)
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
