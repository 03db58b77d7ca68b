"""Per-Service counters as Prometheus counters, from kernel values that restart when
an element is made anew (no kernel here: the reads are given)."""

from __future__ import annotations

from nftproxy.controller.serve.traffic import LONG, Services, ServiceTraffic, labels_of
from nftproxy.nft.model import Family
from nftproxy.nft.read import Counted
from nftproxy.ruleset import names

WEB = ("default", "web", "http", "TCP")


class Kernel:
    """What the sets hold: counters by set name (IPv4 only)."""

    def __init__(self) -> None:
        self.sets: dict[str, list[Counted]] = {}

    def read(self, family: Family, table: str, name: str) -> list[Counted]:
        assert table == names.TABLE
        return self.sets.get(name, []) if family == Family.IP else []


def _series(traffic: ServiceTraffic) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (f.name, tuple(s.labels.values())): s.value for f in traffic.collect() for s in f.samples
    }


def _new(traffic: ServiceTraffic) -> float | None:
    return _series(traffic).get(("nftproxy_service_new_connections", WEB))


def test_a_counter_only_grows_over_elements_made_anew() -> None:
    kernel = Kernel()
    services: Services | None = None
    traffic = ServiceTraffic(kernel.read, lambda: services)
    cluster_ip = Counted(b"\x01", "default/web/tcp/http", 5)
    node_port = Counted(b"\x02", "default/web/tcp/http", 2)
    kernel.sets[names.SERVICE_COUNTERS] = [cluster_ip, node_port]
    assert _new(traffic) is None  # nothing read before the first sync
    services = Services(frozenset({("default", "web")}))
    assert _new(traffic) == 7  # what the elements counted since they were made
    kernel.sets[names.SERVICE_COUNTERS] = [Counted(b"\x01", cluster_ip.comment, 9), node_port]
    assert _new(traffic) == 11
    # The NodePort's element was made anew (lower than last time): all of it is new.
    kernel.sets[names.SERVICE_COUNTERS] = [Counted(b"\x01", cluster_ip.comment, 9)]
    assert _new(traffic) == 11
    kernel.sets[names.SERVICE_COUNTERS] = [
        Counted(b"\x01", cluster_ip.comment, 9),
        Counted(b"\x02", node_port.comment, 1),
    ]
    assert _new(traffic) == 12
    # The Service is gone: so is its series, and a new one starts from what it counts.
    services = Services(frozenset())
    assert _new(traffic) is None
    services = Services(frozenset({("default", "web")}))
    kernel.sets[names.SERVICE_COUNTERS] = [Counted(b"\x01", cluster_ip.comment, 10)]
    assert _new(traffic) == 1


def test_refused_connections_are_their_own_series() -> None:
    kernel = Kernel()
    traffic = ServiceTraffic(kernel.read, lambda: Services(frozenset({("default", "web")})))
    kernel.sets[names.NO_ENDPOINT_SERVICES] = [Counted(b"\x01", "default/web/tcp/http", 4)]
    series = _series(traffic)
    assert series[("nftproxy_service_rejected_connections", WEB)] == 4
    assert ("nftproxy_service_new_connections", WEB) not in series


def test_a_pods_host_port_and_a_foreign_comment_are_not_services() -> None:
    kernel = Kernel()
    traffic = ServiceTraffic(kernel.read, lambda: Services(frozenset({("default", "web")})))
    kernel.sets[names.SERVICE_COUNTERS] = [
        Counted(b"\x01", "default/db/tcp/hostport-5432", 3),  # a Pod
        Counted(b"\x02", "not an entry", 3),
        Counted(b"\x03", None, 3),
    ]
    assert _series(traffic) == {}


def test_a_failed_read_keeps_the_totals() -> None:
    kernel = Kernel()
    traffic = ServiceTraffic(kernel.read, lambda: Services(frozenset({("default", "web")})))
    kernel.sets[names.SERVICE_COUNTERS] = [Counted(b"\x01", "default/web/tcp/http", 3)]
    assert _new(traffic) == 3

    def broken(family: Family, table: str, name: str) -> list[Counted]:
        raise OSError("gone")

    traffic.read = broken
    assert _new(traffic) == 3


def test_labels_from_comments() -> None:
    assert labels_of("default/web/tcp/http") == WEB
    assert labels_of("default/web/udp") == ("default", "web", "", "UDP")
    assert labels_of("a/b") is None
    long_ns, long_name = "n" * 60, "s" * 60
    shortened = names.comment(f"{long_ns}/{long_name}/tcp/http")
    got = labels_of(shortened)
    assert got is not None and long_ns.startswith(got[0]) and long_name.startswith(got[1])
    assert len(long_ns) + len(long_name) > LONG
    # A Service with a long name is known by the start its comment keeps.
    kernel = Kernel()
    services = Services(frozenset({(long_ns, long_name)}), frozenset({(long_ns, long_name)}))
    traffic = ServiceTraffic(kernel.read, lambda: services)
    kernel.sets[names.SERVICE_COUNTERS] = [Counted(b"\x01", shortened, 2)]
    assert [v for (_, labels), v in _series(traffic).items() if labels == got] == [2]
