"""The long-running proxy wired: reflectors, cache, loop and servers from ``Settings``.

Threads: one reflector per watched resource (they only record changes), one
asyncio thread for every HTTP listener, one that posts Events, and the main
thread, which runs the sync loop, and one that finds what the kernel holds before
the first sync. Nothing forks. The cyclic garbage collector runs as usual, paused
only inside a sync (bounded), less often until the first sync (``run``'s
``STARTING_GC``), and what survives the first full load is frozen out of its
scans (``gc.freeze``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nftproxy import log
from nftproxy.controller.loop import Loop, Timing
from nftproxy.controller.serve.health import ProxyHealth, ServiceHealthServers
from nftproxy.controller.serve.http import HttpServers, Response
from nftproxy.controller.serve.metrics import Metrics
from nftproxy.controller.serve.traffic import LONG, Services, ServiceTraffic
from nftproxy.k8s.cache import Cache
from nftproxy.k8s.client import (
    DEFAULT_BURST,
    DEFAULT_QPS,
    RateLimiter,
    api_client,
    event_writers,
    watched,
)
from nftproxy.k8s.events import EventRecorder, Regarding
from nftproxy.k8s.reflector import Reflector
from nftproxy.k8s.restmetrics import instrument
from nftproxy.nft.kernel import Counters, Kernel
from nftproxy.settings import Settings
from nftproxy.settings.node import ConfigError, node_config

BIND_RETRY = 5.0
"""Seconds between tries of an address that could not be bound."""


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
    events: EventRecorder | None = None

    def ready(self) -> bool:
        """Every list has completed once."""
        return all(r.synced.is_set() for r in self.reflectors)

    def start(self) -> None:
        """Start reading the kernel for the first sync, and the reflectors."""
        self.loop.read_ahead()
        for r in self.reflectors:
            threading.Thread(target=r.run, name=f"watch-{r.what.kind}", daemon=True).start()
        if self.events is not None:
            threading.Thread(
                target=self.events.run, args=(self.stop,), name="events", daemon=True
            ).start()

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


def build_proxy(
    settings: Settings,
    kernel: Kernel,
    *,
    dry_run: bool = False,
    netns: str | None = None,
    checkpoint: Path | None = None,
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
        checkpoint=checkpoint,
    )
    loop.cache.on_change = loop.changed
    api = api_client(master=settings.master, kubeconfig=settings.kubeconfig)
    instrument(api, metrics.rest)
    limiter = RateLimiter(settings.qps, settings.burst)
    what = watched(
        api,
        base.name,
        host_ports=base.host_ports,
        limiter=limiter,
    )

    def counted(kind: str, reason: str) -> None:
        metrics.watch_errors.labels(resource=kind, reason=reason).inc()

    if not dry_run and base.service_counters:
        _count_traffic(loop, metrics, netns)
    reflectors = [Reflector(w, loop.cache, stop, on_error=counted) for w in what]
    health.in_sync += [r.in_sync for r in reflectors]
    proxy = Proxy(loop, loop.cache, reflectors, servers, health, metrics, stop)
    if not dry_run:  # shadow mode tells nobody anything
        proxy.events = _record_events(loop, api, base.name)
    return proxy


def _count_traffic(loop: Loop, metrics: Metrics, netns: str | None) -> None:
    """Per-Service connection counts on /metrics, read from the kernel at each scrape."""
    counters = Counters(netns)

    def programmed() -> Services | None:
        owners = loop.owners("Service")
        if owners is None:
            return None
        return Services(owners, frozenset(o for o in owners if len(o[0]) + len(o[1]) > LONG))

    metrics.registry.register(ServiceTraffic(counters.read, programmed))


def _record_events(loop: Loop, api: object, node_name: str) -> EventRecorder:
    """Warning Events on what cannot be programmed: invalid objects (the cache),
    healthCheckNodePorts that cannot be bound, syncs that keep failing (the Node).
    Their own token bucket (client-go's default for Events: 5 QPS, burst 10)."""
    create, patch = event_writers(api, RateLimiter(DEFAULT_QPS, DEFAULT_BURST))
    recorder = EventRecorder(create, patch, node_name)

    def invalid(kind: str, raw: Mapping[str, Any], field: str, message: str) -> None:
        regarding = Regarding.of(raw, kind, str(raw.get("apiVersion") or "v1"))
        recorder.record(regarding, "Unprogrammable", "Programming", f"{field}: {message}")

    def unbound(name: tuple[str, str], port: int, error: str) -> None:
        regarding = Regarding("Service", "v1", name[1], name[0])
        note = f"healthCheckNodePort {port} cannot be opened: {error}"
        recorder.record(regarding, "HealthCheckNodePortUnavailable", "Binding", note)

    loop.cache.on_invalid = invalid
    if loop.observer.services is not None:
        loop.observer.services.on_bind_failure = unbound
    loop.observer.events = recorder
    return recorder


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
            threading.Thread(
                target=_bind_later,
                args=(proxy, what, host, port, handler),
                name=f"bind-{what}",
                daemon=True,
            ).start()
            continue
        setattr(proxy, f"{what}_port", bound)


def _bind_later(
    proxy: Proxy, what: str, host: str, port: int, handler: Callable[[str], Response]
) -> None:
    """Try a failed bind again every ``BIND_RETRY`` seconds until it works or the
    proxy stops (kube-proxy's retry, without bindAddressHardFail)."""
    while not proxy.stop.wait(BIND_RETRY):
        try:
            bound = proxy.servers.listen(host, port, handler)
        except OSError:
            continue
        except RuntimeError:  # the servers closed meanwhile
            return
        setattr(proxy, f"{what}_port", bound)
        log.logger().info(f"{what} server bound at last", host=host, port=bound)
        return


def start_proxy(
    settings: Settings,
    kernel: Kernel,
    *,
    dry_run: bool = False,
    netns: str | None = None,
    checkpoint: Path | None = None,
) -> Proxy:
    """Build the proxy, open its servers and start watching; the loop is the caller's.
    ``checkpoint``: where the loop keeps what it applied as it stops (and finds it
    as it starts)."""
    proxy = build_proxy(settings, kernel, dry_run=dry_run, netns=netns, checkpoint=checkpoint)
    proxy.servers.__enter__()
    try:
        _listen(proxy, settings)
    except BaseException:
        proxy.close()
        raise
    proxy.start()
    return proxy
