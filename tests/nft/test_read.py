"""Reading tables back over netlink: the same objects nft's own listing gives, and
one consistent state while the kernel changes underneath."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import comparable

from nftproxy.lab.netns import Lab, in_ns
from nftproxy.nft.errors import DumpInterruptedError
from nftproxy.nft.kernel import Libnftables, in_netns
from nftproxy.nft.model import Chain, DataType, Element, Family, Raw, Rule, Ruleset, Set, Table
from nftproxy.nft.read import TableReader
from nftproxy.nft.render import render_script
from nftproxy.nft.stages import ElementStage
from nftproxy.nft.transaction import AddElements, Transaction
from nftproxy.nft.wire import Message, Socket, string
from nftproxy.sync.apply import read_tables

# Shapes nftproxy never writes, next to ones it does: the reader must agree with
# nft's listing wherever nft's parser knows the shape.
FOREIGN = """
table ip other {}
delete table ip other
table ip6 other {}
delete table ip6 other
table ip other {
    set cidrs {
        type ipv4_addr; flags interval;
        elements = { 10.0.0.0/8, 172.16.0.5-172.16.0.9, 192.168.1.1, 224.0.0.0/3 }
    }
    set fw {
        type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval;
        elements = { 1.2.3.4 . tcp . 80 . 10.0.0.0/8, 1.2.3.4 . udp . 53 . 192.168.0.1-192.168.0.3,
                     5.6.7.8 . tcp . 443 . 8.8.8.8 }
    }
    map ports { type inet_service : verdict; elements = { 22 : drop, 80 : jump c2 } }
    set pairs {
        type ipv4_addr . inet_service; comment "plain pairs";
        elements = { 1.1.1.1 . 53 comment "dns", 9.9.9.9 . 853 }
    }
    set clients { type ipv4_addr; flags dynamic,timeout; timeout 30s; }
    chain c2 { }
    chain c {
        type filter hook input priority 10; policy accept;
        ip daddr 10.0.0.0/16 drop
        ip daddr != 10.96.0.0/12 accept
        ct state established,related accept
        ct state new jump c2
        meta mark 0x10 accept
        meta mark & 0x4000 != 0 accept
        meta mark set meta mark or 0x10
        meta mark set meta mark xor 0x10
        meta l4proto udp th dport 53 accept
        tcp dport 22 drop
        ip saddr 1.2.3.4 counter accept
        ip saddr @cidrs drop
        ip saddr != @cidrs return
        ip daddr . meta l4proto . th dport . ip saddr @fw accept
        th dport vmap @ports
        meta l4proto { tcp, udp } accept
        fib saddr type local accept comment "from this node"
        log prefix "x" drop
        numgen random mod 4 2 accept
        update @clients { ip saddr }
        meta l4proto tcp reject with tcp reset
        reject
    }
    chain n {
        type nat hook prerouting priority -100; policy accept;
        meta l4proto tcp dnat to 10.1.2.3:8080
    }
    chain p {
        type nat hook postrouting priority 100; policy accept;
        masquerade fully-random
        masquerade
    }
}
table ip6 other {
    set cidrs {
        type ipv6_addr; flags interval;
        elements = { fd00::/64, 2001:db8::1-2001:db8::5, ::1, ff00::/8 }
    }
    chain c {
        type filter hook forward priority 0; policy drop;
        ip6 daddr fd00:10:96::/112 drop
        ip6 saddr != fd00::/56 accept
        ip6 daddr ::1 reject
    }
}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("read") as lab:
        yield lab


def has_raw(rule: Rule) -> bool:
    return any(isinstance(term, Raw) for term in rule.terms)


@pytest.mark.kernel
def test_foreign_shapes_read_as_nft_reads_them(lab: Lab) -> None:
    lab.load(FOREIGN)
    kernel = Libnftables(lab.node)
    for family in Family:
        ours = comparable(kernel.read_table(family, "other"))
        nfts = comparable(read_tables(kernel, "other", via_nft=True)[family])
        assert ours is not None and nfts is not None
        assert ours.sets == nfts.sets
        assert [(c.name, c.base) for c in ours.chains] == [(c.name, c.base) for c in nfts.chains]
        for mine, theirs in zip(ours.chains, nfts.chains, strict=True):
            assert len(mine.rules) == len(theirs.rules), mine.name
            for a, b in zip(mine.rules, theirs.rules, strict=True):
                assert a == b or has_raw(b), (a, b)


def _rules(table: Table | None, chain: str) -> tuple[Rule, ...]:
    assert table is not None
    return next(c for c in table.chains if c.name == chain).rules


@pytest.mark.kernel
def test_unknown_expressions_stay_visible(lab: Lab) -> None:
    """What nftproxy never writes is kept as Raw terms (never equal to a desired
    term), and shapes nft's own JSON parser leaves raw may be read precisely."""
    lab.load(FOREIGN)
    rules = _rules(Libnftables(lab.node).read_table(Family.IP, "other"), "c")
    texts = [[t.text for t in r.terms if isinstance(t, Raw)] for r in rules]
    assert any("counter" in " ".join(t) for t in texts)
    assert any("log" in " ".join(t) for t in texts)
    masquerades = _rules(Libnftables(lab.node).read_table(Family.IP, "other"), "p")
    assert not has_raw(masquerades[0])
    assert has_raw(masquerades[1])  # without fully-random
    assert not any(has_raw(r) for r in rules[:9])


@pytest.mark.kernel
def test_absent_things_are_none(lab: Lab) -> None:
    kernel = Libnftables(lab.node)
    assert kernel.read_table(Family.IP, "nothing-here") is None
    assert kernel.read_set(Family.IP, "nothing-here", "s") is None
    lab.load(FOREIGN)
    assert kernel.read_set(Family.IP, "other", "nothing-here") is None
    pairs = kernel.read_set(Family.IP, "other", "pairs")
    assert pairs is not None and pairs.comment == "plain pairs"
    assert {e.comment for e in pairs.elements} == {"dns", None}
    assert "other" in kernel.tables(Family.IP)


BIG = 20_000


def _toggle(node: str, stop: threading.Event, done: list[int], every: float) -> None:
    """Swap element and rule together, atomically, until told to stop."""
    swaps = [
        "delete element ip t s { 9.9.9.1 }\nadd element ip t s { 9.9.9.2 }\n"
        "flush chain ip t c\nadd rule ip t c ip daddr 9.9.9.2 drop\n",
        "delete element ip t s { 9.9.9.2 }\nadd element ip t s { 9.9.9.1 }\n"
        "flush chain ip t c\nadd rule ip t c ip daddr 9.9.9.1 drop\n",
    ]
    while not stop.wait(every):
        in_ns(node, "nft", "-f", "-", stdin=swaps[len(done) % 2])
        done.append(1)


@pytest.mark.kernel
def test_a_read_is_one_consistent_state(lab: Lab) -> None:
    """While transactions swap a set element and a rule together, every read sees
    both old or both new: the ruleset generation is checked around the dumps."""
    elements = ", ".join(f"10.{i >> 8}.{i & 255}.1" for i in range(BIG))
    lab.load(
        "table ip t {\n"
        f"  set s {{ type ipv4_addr; elements = {{ 9.9.9.1, {elements} }} }}\n"
        "  chain c { ip daddr 9.9.9.1 drop; }\n}\n"
    )
    kernel = Libnftables(lab.node)
    # Commits about every three reads (a read takes 0.05-0.3 s, depending on the
    # machine, and each `nft -f` competes with it for the CPU): often enough that
    # reads overlap commits, seldom enough that most reads can get through.
    every = max(0.2, 3 * _median_read(kernel))
    stop, done = threading.Event(), list[int]()
    worker = threading.Thread(target=_toggle, args=(lab.node, stop, done, every))
    worker.start()
    reads, refused = 0, 0
    try:
        # At least 15 reads, and on until 6 swaps happened (a slow machine swaps
        # less often than it reads); 200 at most.
        while reads < 15 or (len(done) <= 5 and reads < 200):
            reads += 1
            try:
                table = kernel.read_table(Family.IP, "t")
            except DumpInterruptedError:
                # An honest refusal, not an inconsistent answer: allowed, counted.
                refused += 1
                continue
            assert table is not None
            (s,) = table.sets
            marker = {e.key[0] for e in s.elements} & {"9.9.9.1", "9.9.9.2"}
            (chain,) = table.chains
            assert len(s.elements) == BIG + 1
            assert len(marker) == 1
            assert _dropped(chain) == marker.pop()
    finally:
        stop.set()
        worker.join()
        subprocess.run(
            ["ip", "netns", "exec", lab.node, "nft", "delete", "table", "ip", "t"], check=False
        )
    assert len(done) > 5
    assert refused <= reads // 4, f"{refused} of {reads} reads refused"


def _median_read(kernel: Libnftables) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        kernel.read_table(Family.IP, "t")
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def _dropped(chain: Chain) -> str:
    (rule,) = chain.rules
    value = rule.terms[0].value  # type: ignore[union-attr]
    assert isinstance(value, str)
    return value


@pytest.mark.kernel
def test_kernel_in_a_namespace_leaves_the_caller_home(lab: Lab) -> None:
    """Sockets are opened inside --netns; the calling thread returns to its own."""
    home = os.stat("/proc/thread-self/ns/net").st_ino
    kernel = Libnftables(lab.node)
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    kernel.run("add table ip only-there\n")
    assert "only-there" in kernel.tables(Family.IP)
    assert "only-there" not in Libnftables().tables(Family.IP)
    kernel.run("delete table ip only-there\n")


def _churn(node: str, stop: threading.Event, done: list[int]) -> None:
    """Another owner committing to its own table as fast as it can."""
    kernel = Libnftables(node)
    kernel.run("add table ip busy\nadd set ip busy s { type ipv4_addr; }\n")
    while not stop.is_set():
        verb = "add" if len(done) % 2 == 0 else "delete"
        kernel.run(f"{verb} element ip busy s {{ 192.0.2.1 }}\n")
        done.append(1)


@pytest.mark.kernel
def test_reads_succeed_while_another_owner_commits_all_the_time(lab: Lab) -> None:
    """The generation is global; when other tables change faster than a read takes,
    a read still completes: two identical reads in a row are one consistent state."""
    elements = ", ".join(f"10.{i >> 8}.{i & 255}.1" for i in range(BIG))
    lab.load(f"table ip t {{\n  set s {{ type ipv4_addr; elements = {{ {elements} }} }}\n}}\n")
    kernel = Libnftables(lab.node)
    expected = comparable(kernel.read_table(Family.IP, "t"))
    stop, done = threading.Event(), list[int]()
    worker = threading.Thread(target=_churn, args=(lab.node, stop, done))
    worker.start()
    try:
        time.sleep(0.1)
        for _ in range(3):  # in key order: a hash set's dump order changes when it grows
            assert comparable(kernel.read_table(Family.IP, "t")) == expected
    finally:
        stop.set()
        worker.join()
        for table in ("t", "busy"):
            subprocess.run(
                ["ip", "netns", "exec", lab.node, "nft", "delete", "table", "ip", table],
                check=False,
            )
    assert len(done) > 100


@pytest.mark.kernel
@pytest.mark.parametrize("interface", ["pod*", "cbr0"])
def test_interface_detectors_read_back(interface: str) -> None:
    """With --detect-local-mode InterfaceNamePrefix or BridgeInterface the rules match
    ``iifname``: read back over netlink and from nft's JSON, they plan to nothing."""
    import dataclasses  # noqa: PLC0415

    from helpers import NODE, endpoint, service, slice_, state_of  # noqa: PLC0415

    from nftproxy.ruleset.build import build  # noqa: PLC0415
    from nftproxy.sync.apply import desired_tables, plan_all, sync, without_chain_comments  # noqa: PLC0415

    node = dataclasses.replace(NODE, pod_interface=interface, cluster_cidrs=())
    docs = [
        service(
            type="NodePort",
            externalTrafficPolicy="Local",
            ports=[{"name": "p", "port": 80, "nodePort": 30080}],
        ),
        slice_("svc", endpoint("10.1.0.1", node="node-b")),
    ]
    ruleset = build(state_of(*docs, node=node))
    assert f'iifname "{interface}"' in str(ruleset) or any(
        interface in str(r) for t in ruleset.tables for c in t.chains for r in c.rules
    )
    with Lab("iifname") as lab:
        kernel = Libnftables(lab.node)
        sync(kernel, ruleset)
        desired = desired_tables(ruleset)
        assert not plan_all(desired, read_tables(kernel))
        assert not plan_all(without_chain_comments(desired), read_tables(kernel, via_nft=True))


@pytest.mark.kernel
def test_a_dump_left_early_is_read_to_its_end(lab: Lab) -> None:
    """A reader that stops in the middle of a large dump leaves the socket able to
    dump again (the kernel refuses a new dump while one is unfinished)."""
    elements = ", ".join(f"10.{i >> 8}.{i & 255}.1" for i in range(BIG))
    lab.load(f"table ip t {{\n  set s {{ type ipv4_addr; elements = {{ {elements} }} }}\n}}\n")
    with in_netns(lab.node):
        sock = Socket()
    try:
        request = {1: string("t"), 2: string("s")}  # NFTA_SET_ELEM_LIST_TABLE, _SET
        bodies = sock.bodies(Message.GETSETELEM, 2, request)  # AF_INET
        next(bodies)
        bodies.close()  # stopped after the first reply
        table = TableReader(sock, Family.IP, "t").read()
        assert table is not None
        (s,) = table.sets
        assert len(s.elements) == BIG
    finally:
        sock.close()
        in_ns(lab.node, "nft", "delete", "table", "ip", "t")


@pytest.mark.kernel
def test_a_set_read_while_the_kernel_rehashes_it_is_read_again(lab: Lab) -> None:
    """Elements added to an empty hash set grow its table; the kernel rehashes it
    after the commit, and a dump across that repeats and misses elements (netlink
    writes are fast enough to read in the middle of it: at 30,000 elements, every
    time). Read right
    after each load, every time, the set is whole."""
    kernel = Libnftables(lab.node)
    empty = Set("s", (DataType.ADDR, DataType.SERVICE))
    count = 30_000
    elements = tuple(
        Element((f"10.{i >> 8 & 255}.{i & 255}.{i >> 16}", "80")) for i in range(count)
    )
    add = ElementStage((Transaction(Family.IP, "t", (AddElements(empty, elements),)),))
    for _ in range(3):
        kernel.run(render_script(Ruleset((Table(Family.IP, "t", sets=(empty,)),)), "t"))
        kernel.write_elements(add)
        s = kernel.read_set(Family.IP, "t", "s")
        assert s is not None and sorted(s.elements) == sorted(elements)
        kernel.run("delete table ip t\n")
