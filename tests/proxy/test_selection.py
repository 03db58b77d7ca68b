"""Endpoint choice through the kernel: equal spread, and ClientIP affinity with its timeout."""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import HERE

from nftproxy.lab.netns import Lab, in_ns
from nftproxy.lab.probe import Reached, connect
from nftproxy.lab.scenario import Runner, load_scenario
from nftproxy.ruleset import names

ENDPOINTS = ("10.6.0.1", "10.6.0.2", "10.6.0.3")
SPREAD_TRIES = 600
# Each endpoint's count is Binomial(600, 1/3): mean 200, sd 11.5. Six sd either way
# fails a correct ruleset with probability ~2e-9; a choice among 2 of 3 (counts 300,
# 300, 0) or a first-endpoint bias of 1/2 (300) fails it for sure.
SPREAD_BOUND = 70


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, Runner]]:
    with Lab("select") as lab:
        runner = Runner(load_scenario(HERE / "flows" / "selection.yaml"), lab)
        for client in ("10.0.0.2", "10.0.0.3"):
            lab.add_host(ipaddress.ip_address(client))
        runner.setup()
        yield lab, runner


def _client(lab: Lab, addr: str) -> str:
    return lab.hosts[ipaddress.ip_address(addr)]


def _endpoint(lab: Lab, src: str, dst: str, port: int) -> str:
    outcome = connect(_client(lab, src), dst, port, "tcp", src=src)
    assert isinstance(outcome, Reached), outcome
    return outcome.local


def _affinity_sets(lab: Lab) -> dict[str, dict[str, str]]:
    """Affinity set name -> {client address: its endpoint's address}."""
    out = json.loads(in_ns(lab.node, "nft", "-j", "list", "table", "ip", "nftproxy"))
    by_id = {names.endpoint_id(ep, 80): ep for ep in ENDPOINTS}
    sets = {}
    for obj in out["nftables"]:
        s = obj.get("set")
        if s and s["name"].startswith("affinity-"):
            held = [e["elem"]["val"]["concat"] for e in s.get("elem", [])]
            sets[s["name"]] = {client: by_id[ep_id] for client, ep_id in held}
    return sets


def _assert_even(counts: Counter[str]) -> None:
    mean = SPREAD_TRIES / len(ENDPOINTS)
    assert set(counts) == set(ENDPOINTS), counts
    for ep, n in counts.items():
        assert abs(n - mean) <= SPREAD_BOUND, f"{ep}: {n} of {SPREAD_TRIES} ({counts})"


@pytest.mark.kernel
class TestRandomChoice:
    def test_endpoints_are_equally_likely(self, lab: tuple[Lab, Runner]) -> None:
        """600 connections spread evenly over 3 endpoints (the numgen map lookup)."""
        counts = Counter(
            _endpoint(lab[0], "10.0.0.2", "172.30.0.10", 80) for _ in range(SPREAD_TRIES)
        )
        _assert_even(counts)


@pytest.mark.kernel
class TestClientIPAffinity:
    def test_client_keeps_its_endpoint(self, lab: tuple[Lab, Runner]) -> None:
        """Every connection of one client, by ClusterIP or NodePort, reaches one endpoint."""
        first = _endpoint(lab[0], "10.0.0.2", "172.30.0.11", 80)
        for _ in range(20):
            assert _endpoint(lab[0], "10.0.0.2", "172.30.0.11", 80) == first
            assert _endpoint(lab[0], "10.0.0.2", "192.168.0.2", 30011) == first

    def test_affinity_is_recorded_per_client(self, lab: tuple[Lab, Runner]) -> None:
        """Each client is recorded once, with the endpoint it got, in its Service
        port's set."""
        got = {c: _endpoint(lab[0], c, "172.30.0.11", 80) for c in ("10.0.0.2", "10.0.0.3")}
        sets = _affinity_sets(lab[0])
        assert [n.split("-", 2)[-1] for n in sets] == ["ns/sticky/tcp/p"], sets
        assert next(iter(sets.values())) == got

    def test_affinity_expires_after_timeout(self, lab: tuple[Lab, Runner]) -> None:
        """timeoutSeconds after its last connection a client is forgotten."""
        _endpoint(lab[0], "10.0.0.3", "172.30.0.11", 80)
        assert any("10.0.0.3" in m for m in _affinity_sets(lab[0]).values())
        time.sleep(2.5)
        assert not any("10.0.0.3" in m for m in _affinity_sets(lab[0]).values())

    def test_new_connection_refreshes_timeout(self, lab: tuple[Lab, Runner]) -> None:
        """A client that keeps connecting within the timeout keeps its endpoint."""
        first = _endpoint(lab[0], "10.0.0.3", "172.30.0.11", 80)
        for _ in range(3):
            time.sleep(1.2)
            assert _endpoint(lab[0], "10.0.0.3", "172.30.0.11", 80) == first

    def test_first_choice_is_equally_likely(self, lab: tuple[Lab, Runner]) -> None:
        """With the affinity forgotten before each connection, the sticky chain's
        chained 1/(n-i) choices give every endpoint 1/n."""
        counts: Counter[str] = Counter()
        names = list(_affinity_sets(lab[0]))
        flush = "\n".join(f"flush set ip nftproxy {n}" for n in names) + "\n"
        for _ in range(SPREAD_TRIES):
            in_ns(lab[0].node, "nft", "-f", "-", stdin=flush)
            counts[_endpoint(lab[0], "10.0.0.2", "172.30.0.11", 80)] += 1
        _assert_even(counts)
