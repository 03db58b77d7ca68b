"""``nftproxy trace``: real connections in a lab, traced by the kernel; the printed
path ends where the connection went, and the marker table never outlives the trace."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator

import pytest
from webcase import CLIENT, EPS, ruleset, web

from nftproxy.cli.main import main
from nftproxy.diagnose.trace import PREFIX, Connection, remove_stale, run_trace
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.lab.probe import REJECT, Reached, connect
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Family
from nftproxy.sync.apply import sync
from nftproxy.sync.cleanup import cleanup


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, Libnftables]]:
    with Lab("trace") as made:
        made.add_node_ip(ipaddress.ip_address("192.168.0.2"))
        for addr in (CLIENT, *EPS):
            made.add_host(ipaddress.ip_address(addr))
        made.start_responders([80, 53])
        kernel = Libnftables(made.node)
        sync(kernel, ruleset(*web(EPS[0], EPS[1])))
        yield made, kernel


def traced(lab_: Lab, kernel: Libnftables, port: int) -> tuple[object, list[object]]:
    got: list[object] = []

    def send() -> None:
        ns = lab_.hosts[ipaddress.ip_address(CLIENT)]
        got.append(connect(ns, "172.30.0.10", port, "tcp", src=CLIENT))

    conn = Connection(CLIENT, "172.30.0.10", port, "tcp")
    walks = run_trace(kernel, lab_.node, conn, count=1, timeout=10, on_ready=send)
    return got[0], list(walks)


@pytest.mark.kernel
def test_the_path_ends_at_the_endpoint_the_connection_reached(
    lab: tuple[Lab, Libnftables],
) -> None:
    lab_, kernel = lab
    outcome, walks = traced(lab_, kernel, 80)
    assert isinstance(outcome, Reached)
    walk = walks[0]
    assert walk.verdict == "dnat"  # type: ignore[attr-defined]
    assert walk.endpoint == (outcome.local, 80)  # type: ignore[attr-defined]
    chains = [s.chain for s in walk.steps]  # type: ignore[attr-defined]
    assert "services" in chains and "pick-2" in chains
    assert walk.as_json()["service"] == "ns/web/tcp/http"  # type: ignore[attr-defined]
    assert not [t for t in kernel.tables(Family.IP) if t.startswith(PREFIX)]


@pytest.mark.kernel
def test_a_port_without_endpoints_is_traced_to_its_reject(lab: tuple[Lab, Libnftables]) -> None:
    lab_, kernel = lab
    outcome, walks = traced(lab_, kernel, 81)
    assert outcome == REJECT
    assert walks[0].verdict == "reject"  # type: ignore[attr-defined]
    assert any(s.chain == "reject-chain" for s in walks[0].steps)  # type: ignore[attr-defined]


@pytest.mark.kernel
def test_a_killed_traces_table_goes_once_its_lease_runs_out(
    lab: tuple[Lab, Libnftables],
) -> None:
    """A live trace's table stays (its lease holds, whatever PID namespace it ran
    in), an expired or lease-less one goes; cleanup removes every one."""
    lab_, kernel = lab
    now = time.time()
    live, expired = f"{PREFIX}{int(now + 100)}-a1b2c3", f"{PREFIX}{int(now - 1)}-d4e5f6"
    for name in (live, expired, f"{PREFIX}999999999"):  # the last: named before leases
        in_ns(lab_.node, "nft", "add", "table", "ip", name)
    assert remove_stale(kernel, now) == [f"ip {expired}", f"ip {PREFIX}999999999"]
    assert f"table ip {live}" in cleanup(kernel, dry_run=True)
    in_ns(lab_.node, "nft", "delete", "table", "ip", live)


@pytest.mark.kernel
def test_the_command(lab: tuple[Lab, Libnftables], capsys: pytest.CaptureFixture[str]) -> None:
    lab_, kernel = lab
    sender = threading.Timer(
        1.0,
        lambda: connect(
            lab_.hosts[ipaddress.ip_address(CLIENT)], "172.30.0.10", 80, "tcp", src=CLIENT
        ),
    )
    sender.start()
    args = ["trace", "--netns", lab_.node, "--from", CLIENT, "--to", "172.30.0.10"]
    assert main([*args, "--port", "80", "--count", "1", "--timeout", "10", "--json"]) == 0
    sender.join()
    walks = json.loads(capsys.readouterr().out)
    assert walks[0]["verdict"] == "dnat" and walks[0]["endpoint"]["ip"] in EPS[:2]
    assert not [t for t in kernel.tables(Family.IP) if t.startswith(PREFIX)]
