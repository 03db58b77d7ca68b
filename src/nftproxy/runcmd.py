"""``nftproxy run``: the long-running proxy a node runs in place of kube-proxy.

Threads: one reflector per watched resource (they only record changes), one
asyncio thread for every HTTP listener, and the main thread, which runs the
sync loop. Nothing forks. The cyclic garbage collector runs as usual, paused
only inside a sync (bounded), and what survives the first full load is frozen
out of its scans (``gc.freeze``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

from nftproxy import log, sysctls
from nftproxy.api.cache import Cache
from nftproxy.api.client import RateLimiter, api_client, serves_service_cidrs, watched
from nftproxy.api.reflector import Reflector
from nftproxy.cleanup import cleanup
from nftproxy.config import (
    DEFAULT_MASQUERADE_BIT,
    ConfigError,
    parse_cidrs,
    parse_nodeport_addresses,
)
from nftproxy.features import missing_features
from nftproxy.kernel import Kernel, Libnftables
from nftproxy.loop import Loop, Timing
from nftproxy.pipeline import Options, node_config, pod_interface_of
from nftproxy.runflags import HEALTHZ_DEFAULT, METRICS_DEFAULT
from nftproxy.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.serve.http import HttpServers
from nftproxy.serve.metrics import Metrics


def _split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"{text!r}: want HOST:PORT") from None


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


def timing(opts: Options) -> Timing:
    """The loop's periods from flags and config."""
    return Timing(
        min_sync=float(opts.pick("min_sync_period", 1.0)),
        sync_period=float(opts.pick("sync_period", 30.0)),
        drift_period=float(opts.pick("drift_check_period", 60.0)) or float("inf"),
    )


def checked_settings(opts: Options) -> dict[str, Any]:
    """Every setting ``run`` takes from flags and config, validated, without touching
    the host or the cluster: what ``--check-config`` prints."""
    out: dict[str, Any] = {"config": str(opts.args.config) if opts.args.config else None}
    out.update(dataclasses.asdict(timing(opts)))
    for what, default in (("healthz", HEALTHZ_DEFAULT), ("metrics", METRICS_DEFAULT)):
        address = opts.pick(f"{what}_bind_address", default)
        if address:
            _split_host_port(str(address))
        out[f"{what}_bind_address"] = address
    out["cluster_cidr"] = [str(c) for c in parse_cidrs(opts.pick("cluster_cidr"))]
    out["service_cidr"] = [str(c) for c in parse_cidrs(opts.pick("service_cidr"))]
    out["nodeport_addresses"] = list(parse_nodeport_addresses(opts.pick("nodeport_addresses")))
    for name in (
        "hostname_override",
        "detect_local_mode",
        "kubeconfig",
        "qps",
        "burst",
    ):
        out[name] = opts.pick(name)
    out["pod_interface"] = pod_interface_of(opts)  # and the mode that needs it has it
    out["masquerade_all"] = bool(opts.pick("masquerade_all"))
    out["masquerade_bit"] = int(opts.pick("masquerade_bit", DEFAULT_MASQUERADE_BIT))
    out["host_ports"] = opts.pick("host_ports") is not False
    out["sysctls"] = sysctls.wanted(opts.pick)
    return out


def build_proxy(args: argparse.Namespace, opts: Options, kernel: Kernel) -> Proxy:
    """Everything ``run`` runs, wired, not started."""
    base = node_config(opts)
    metrics = Metrics()
    periods = timing(opts)
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
        services=None if args.dry_run else ServiceHealthServers(servers, health),
        detect_local=str(opts.pick("detect_local_mode", "ClusterCIDR")),
        dry_run=args.dry_run,
    )
    loop.cache.on_change = loop.changed
    api = api_client(master=args.master, kubeconfig=opts.pick("kubeconfig"))
    limiter = RateLimiter(float(opts.pick("qps", 0) or 0), int(opts.pick("burst", 10) or 10))
    what = watched(
        api,
        base.name,
        host_ports=base.host_ports,
        service_cidrs=serves_service_cidrs(api),
        limiter=limiter,
    )
    reflectors = [Reflector(w, loop.cache, stop) for w in what]
    return Proxy(loop, loop.cache, reflectors, servers, health, metrics, stop)


def _listen(proxy: Proxy, opts: Options) -> None:
    """Open /healthz+/livez and /metrics; a bind failure is fatal only with
    bindAddressHardFail, as in kube-proxy."""
    hard = bool(opts.pick("bind_address_hard_fail", False))
    for what, default in (("healthz", HEALTHZ_DEFAULT), ("metrics", METRICS_DEFAULT)):
        address = opts.pick(f"{what}_bind_address", default)
        if not address:
            continue
        host, port = _split_host_port(str(address))
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


def start_proxy(args: argparse.Namespace, opts: Options, kernel: Kernel) -> Proxy:
    """Build the proxy, open its servers and start watching; the loop is the caller's."""
    proxy = build_proxy(args, opts, kernel)
    proxy.servers.__enter__()
    try:
        _listen(proxy, opts)
    except BaseException:
        proxy.close()
        raise
    proxy.start()
    return proxy


def cmd_run(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    opts = Options(args)
    if args.check_config:
        print(json.dumps(checked_settings(opts), indent=2, default=str))
        return 0
    if args.cleanup:
        for what in cleanup(Libnftables(args.netns), kube_proxy=True, netns=args.netns):
            print(f"removed {what}")
        return 0
    sysctls.apply(sysctls.wanted(opts.pick), args.netns)
    if args.init_only:
        return 0
    kernel = Libnftables(args.netns)
    missing = missing_features(kernel)
    if missing:
        for feature, error in missing:
            log.logger().error("this kernel or nft lacks a feature", feature=feature, error=error)
        return 2
    proxy = start_proxy(args, opts, kernel)
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
