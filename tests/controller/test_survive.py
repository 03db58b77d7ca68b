"""``nftproxy run`` on a hostile node: the API server away at start, a flood of
half-sent requests under a container's open-files limit, SIGTERM with them open,
foreign flushes, a kernel that keeps refusing, reads that fail. The real process
(or the real loop with a kernel seam that fails), a real kernel in a network
namespace, the lab's API server."""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from helpers import (
    IPV4_BACKENDS,
    free_port,
    iptables_saved,
    node_rules,
    serve,
    service_ips,
    wait_for,
)

from nftproxy.controller.proxy import start_proxy
from nftproxy.controller.serve import http
from nftproxy.controller.serve.http import HttpServers, Response
from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.nft.errors import NetlinkError
from nftproxy.nft.kernel import ErrorKind, Libnftables, NftError
from nftproxy.nft.transaction import Batch
from nftproxy.settings import Settings

NODE_IP = "192.168.0.2"


def status(port: int, path: str, timeout: float = 2.0) -> int:
    """The HTTP status of GET path (0: no answer in time)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def in_kernel(lab: Lab, text: str) -> bool:
    return text in service_ips(lab.node)


@contextmanager
def proxy_process(api: FakeAPIServer, lab: Lab, *extra: str, nofile: int = 0) -> Iterator[Any]:
    """``nftproxy run`` in its own process (under ``prlimit --nofile`` when given)."""
    cmd = [
        sys.executable,
        "-m",
        "nftproxy.cli",
        "--log-json",
        "run",
        f"--master={api.url}",
        f"--netns={lab.node}",
        "--hostname-override=node-a",
        f"--node-ip={NODE_IP}",
        "--cluster-cidr=10.0.0.0/8",
        "--min-sync-period=0",
        "--metrics-bind-address=",
        *extra,
    ]
    if nofile:
        cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *cmd]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(proc.stderr or []), name="proxy-log", daemon=True
    )
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def half_sent(port: int, count: int) -> list[socket.socket]:
    """count connections to port, each with one byte of a request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1024)), hard))
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"G")
        out.append(s)
    return out


@pytest.mark.kernel
def test_it_starts_without_the_api_server_and_syncs_when_it_comes() -> None:
    """The API server is away for 8 s: the process stays up, /livez answers 200 and
    /healthz 503 meanwhile; then the kernel is programmed and /healthz is 200."""
    port = free_port()
    api = FakeAPIServer(port=free_port())
    serve(api, "web", "172.30.0.10", "10.1.0.1")
    with (
        Lab("away") as lab,
        proxy_process(api, lab, f"--healthz-bind-address=127.0.0.1:{port}") as (
            proc,
            lines,
        ),
    ):
        wait_for(lambda: status(port, "/livez") == 200)
        assert status(port, "/healthz") == 503
        time.sleep(8)
        assert proc.poll() is None, "".join(lines)
        assert not in_kernel(lab, "172.30.0.10")
        api.start()
        try:
            wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"), timeout=40)
            wait_for(lambda: status(port, "/healthz") == 200)
        finally:
            api.stop()
        assert not [line for line in lines if "Traceback" in line]


@pytest.mark.kernel
@pytest.mark.parametrize("dry_run", [False, True])
def test_it_takes_the_node_over_from_kube_proxy_after_its_first_sync(dry_run: bool) -> None:
    """kube-proxy's rules on the node (iptables, both backends; its nftables table):
    found at start, removed once the first sync has committed; kubelet's chains
    stay. In shadow mode (--dry-run beside kube-proxy) nothing is removed."""
    port = free_port()
    with Lab("takeover") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        for tool in IPV4_BACKENDS:
            in_ns(
                lab.node,
                f"{tool}-restore",
                "--noflush",
                stdin=node_rules(tool),
            )
        in_ns(lab.node, "nft", "add", "table", "ip", "kube-proxy")
        extra = [f"--healthz-bind-address=127.0.0.1:{port}", *(["--dry-run"] if dry_run else [])]
        with proxy_process(api, lab, *extra) as (proc, lines):
            wait_for(lambda: any('"synced"' in line for line in lines), timeout=30)
            if not dry_run:
                assert in_kernel(lab, "172.30.0.10 . tcp . 80")
                wait_for(lambda: any("kube-proxy's rules removed" in line for line in lines))
            else:
                time.sleep(1)
            saved = iptables_saved(lab.node)
            assert proc.poll() is None, "".join(lines[-20:])
        assert ("KUBE-SVC-" in saved) is dry_run and ("KUBE-MARK-MASQ" in saved) is dry_run
        assert saved.count(":KUBE-FIREWALL") == 2 and saved.count(":KUBE-KUBELET-CANARY") == 6
        tables = in_ns(lab.node, "nft", "list", "tables")
        assert ("table ip kube-proxy" in tables) is dry_run


ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"


@pytest.mark.kernel
@pytest.mark.parametrize("dry_run", [True, False])
def test_shadow_mode_leaves_the_sysctls_to_kube_proxy(dry_run: bool) -> None:
    """--dry-run runs beside kube-proxy, which owns the conntrack sysctls: they are
    not written; without it they are."""
    port = free_port()
    with Lab("sysctl") as lab, FakeAPIServer() as api:
        in_ns(lab.node, "sysctl", "-qw", f"{ESTABLISHED}=1000")
        extra = [f"--healthz-bind-address=127.0.0.1:{port}", *(["--dry-run"] if dry_run else [])]
        with proxy_process(api, lab, *extra) as (_, lines):
            wait_for(lambda: any('"synced"' in line for line in lines), timeout=30)
            value = in_ns(lab.node, "sysctl", "-n", ESTABLISHED).strip()
        assert value == ("1000" if dry_run else "86400")


@pytest.mark.kernel
def test_a_flood_of_half_sent_requests_does_not_blind_it() -> None:
    """1,500 clients each send one byte to the healthz port of a proxy whose open
    files are capped at 1,024: /healthz answers within 2 s, a change still reaches
    the kernel; then SIGTERM with 300 of them open ends it with 0 within 5 s, and
    its tables stay."""
    port = free_port()
    with Lab("flood") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        extra = (f"--healthz-bind-address=127.0.0.1:{port}",)
        with proxy_process(api, lab, *extra, nofile=1024) as (proc, lines):
            wait_for(lambda: status(port, "/healthz") == 200, timeout=30)
            clients = half_sent(port, 1500)
            try:
                started = time.monotonic()
                assert status(port, "/healthz", timeout=2.0) == 200
                assert time.monotonic() - started < 2.0
                serve(api, "db", "172.30.0.20", "10.1.0.2")
                wait_for(lambda: in_kernel(lab, "172.30.0.20 . tcp . 80"))
            finally:
                for c in clients[300:]:
                    c.close()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            for c in clients[:300]:
                c.close()
            assert proc.returncode == 0, "".join(lines[-20:])
            assert time.monotonic() - started < 5.0
            assert in_kernel(lab, "172.30.0.10 . tcp . 80")
            assert not [line for line in lines if "Traceback" in line]


@pytest.mark.kernel
def test_foreign_flushes_are_repaired() -> None:
    """``nft flush ruleset`` from outside, three times: each time the drift check
    puts the tables back."""
    with Lab("flush") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        with proxy_process(api, lab, "--drift-check-period=1s", "--healthz-bind-address=") as (
            proc,
            lines,
        ):
            wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"), timeout=30)
            for _ in range(3):
                in_ns(lab.node, "nft", "flush", "ruleset")
                assert not in_kernel(lab, "172.30.0.10")
                wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"), timeout=30)
            assert proc.poll() is None, "".join(lines[-20:])


class FailingKernel(Libnftables):
    """The real kernel behind a seam that fails on request."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.refuse = False
        self.refuse_next = 0
        self.applies = 0
        self.batches: list[Batch] = []
        self.fail_reads = 0
        self.fail_generations = 0

    def apply(self, batch: Batch) -> None:
        self.applies += 1
        self.batches.append(batch)
        if self.refuse or self.refuse_next:
            self.refuse_next = max(0, self.refuse_next - 1)
            raise NftError(ErrorKind.INVALID, "refused (test)")
        super().apply(batch)

    def read_table(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_reads:
            self.fail_reads -= 1
            raise NetlinkError(4, "dump interrupted (test)")
        return super().read_table(*args, **kwargs)

    def generation(self) -> int:
        if self.fail_generations:
            self.fail_generations -= 1
            raise OSError(24, "Too many open files (test)")
        return super().generation()


SETTINGS = Settings(
    hostname_override="node-a",
    node_ips=(NODE_IP,),
    cluster_cidr=("10.0.0.0/8",),
    min_sync_period=0.0,
    sync_period=30.0,
    drift_check_period=0.3,
    healthz_bind_address="127.0.0.1:0",
    metrics_bind_address="",
    qps=-1.0,
)


@contextmanager
def running_loop(kernel: FailingKernel, api: FakeAPIServer, lab: Lab) -> Iterator[Any]:
    proxy = start_proxy(replace(SETTINGS, master=api.url), kernel, netns=lab.node)
    thread = threading.Thread(target=proxy.loop.run, args=(proxy.stop, proxy.ready))
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
        proxy.loop.wake.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def errors(proxy: Any, step: str) -> float:
    value = proxy.metrics.registry.get_sample_value("nftproxy_loop_errors_total", {"step": step})
    return float(value or 0.0)


@pytest.mark.kernel
def test_a_refused_ruleset_is_retried_with_growing_waits() -> None:
    """A kernel that refuses every transaction: about four tries in 8 s (1, 2, 4 s
    apart at most), not one every min-sync-period; then the next sync lands."""
    with Lab("refused") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        kernel = FailingKernel(lab.node)
        kernel.refuse = True
        with running_loop(kernel, api, lab) as proxy:
            time.sleep(8)
            assert 2 <= kernel.applies <= 6, kernel.applies
            assert proxy.loop.failures == kernel.applies
            # From the third failure in a row on: a Warning Event on the Node.
            wait_for(lambda: proxy.loop.failures >= 3, timeout=20)
            wait_for(lambda: bool(api.events), timeout=5)
            (event,) = api.events.values()
            assert event["regarding"] == {"kind": "Node", "apiVersion": "v1", "name": "node-a"}
            assert event["reason"] == "SyncFailed" and "refused (test)" in event["note"]
            kernel.refuse = False
            wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"), timeout=40)


@pytest.mark.kernel
def test_after_a_failure_the_kernel_is_read_and_after_two_the_tables_replaced() -> None:
    """One refused sync: the next plans against a fresh read of the kernel (a small
    transaction, not a whole load). Two in a row: the third replaces the tables
    whole, as a staged load (bounded memory for nft)."""
    with Lab("refused2") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        kernel = FailingKernel(lab.node)
        with running_loop(kernel, api, lab) as proxy:
            wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"))
            in_ns(lab.node, "nft", "add", "chain", "ip", "nftproxy", "foreign")
            kernel.refuse_next, kernel.batches = 1, []
            serve(api, "db", "172.30.0.20", "10.1.0.2")
            wait_for(lambda: in_kernel(lab, "172.30.0.20 . tcp . 80"), timeout=20)
            refused, planned = kernel.batches[0], kernel.batches[-1]
            assert refused.load is None and planned.load is None
            assert "foreign" not in in_ns(lab.node, "nft", "list", "table", "ip", "nftproxy")
            kernel.refuse_next, kernel.batches = 2, []
            serve(api, "cache", "172.30.0.30", "10.1.0.3")
            wait_for(lambda: in_kernel(lab, "172.30.0.30 . tcp . 80"), timeout=20)
            assert [b.load is not None for b in kernel.batches] == [False, False, True]
            assert kernel.batches[-1].staged
            assert in_kernel(lab, "172.30.0.10 . tcp . 80")
            assert proxy.loop.failed_in_row == 0


@pytest.mark.kernel
def test_failed_reads_are_counted_and_the_loop_goes_on() -> None:
    """The drift read and the generation read fail a few times: each is counted under
    its step, nothing ends the loop, and changes keep reaching the kernel."""
    with Lab("reads") as lab, FakeAPIServer() as api:
        serve(api, "web", "172.30.0.10", "10.1.0.1")
        kernel = FailingKernel(lab.node)
        with running_loop(kernel, api, lab) as proxy:
            wait_for(lambda: in_kernel(lab, "172.30.0.10 . tcp . 80"))
            in_ns(lab.node, "nft", "add", "table", "ip", "other")  # the generation moves
            kernel.fail_generations = 3
            kernel.fail_reads = 2
            wait_for(lambda: errors(proxy, "drift") >= 3)
            serve(api, "db", "172.30.0.20", "10.1.0.2")
            wait_for(lambda: in_kernel(lab, "172.30.0.20 . tcp . 80"))


def test_a_wildcard_listens_on_both_families() -> None:
    """0.0.0.0 is Go's wildcard: IPv6 loopback reaches it too."""
    with HttpServers() as servers:
        port = servers.listen("0.0.0.0", 0, lambda _path: Response(200, b"ok\n"))
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((host, port))
                s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_held_connections_are_capped_and_requests_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the cap the oldest connection is closed; headers over 8 KiB or slower than
    the deadline get no answer; a fresh request is answered throughout."""
    monkeypatch.setattr(http, "HEADER_SECONDS", 0.5)
    with HttpServers(max_connections=20) as servers:
        port = servers.listen("127.0.0.1", 0, lambda _path: Response(200, b"ok\n"))
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        try:
            for s in held:
                s.sendall(b"G")
            assert status(port, "/", timeout=2.0) == 200
            wait_for(lambda: servers.evicted >= 30, timeout=5)
            with socket.create_connection(("127.0.0.1", port)) as big:
                big.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
                big.settimeout(3)
                assert big.recv(100) == b""
            with socket.create_connection(("127.0.0.1", port)) as slow:
                slow.sendall(b"GET / HT")
                slow.settimeout(3)
                started = time.monotonic()
                assert slow.recv(100) == b""
                assert time.monotonic() - started < 2.0
        finally:
            for s in held:
                s.close()


def test_the_servers_log_accept_errors_at_most_once_a_second() -> None:
    quiet = http._Quiet()
    loop = asyncio.new_event_loop()
    try:
        for _ in range(100):
            quiet.handle(loop, {"message": "socket.accept() out of system resource"})
    finally:
        loop.close()
    assert quiet.dropped == 99
