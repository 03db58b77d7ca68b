"""Set elements written over netlink: byte for byte what nft writes for the same
elements, for every key and value shape nftproxy declares, in both families."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftproxy.lab.netns import Lab
from nftproxy.nft.kernel import Libnftables, NftError
from nftproxy.nft.model import Chain, DataType, Element, Family, Ruleset, Set, Table
from nftproxy.nft.read import (
    ELEM_DATA,
    ELEM_KEY,
    ELEM_LIST_SET,
    ELEM_LIST_TABLE,
    ELEM_USERDATA,
    _element_attrs,
)
from nftproxy.nft.render import render_script
from nftproxy.nft.stages import ElementStage
from nftproxy.nft.transaction import AddElements, Transaction
from nftproxy.nft.wire import FAMILIES, Message, Socket, string
from nftproxy.nft.write import MESSAGE_BYTES, writable

A, P, S, N, V = DataType.ADDR, DataType.PROTO, DataType.SERVICE, DataType.INDEX, DataType.VERDICT
SHAPES = [  # (key, value) of each set and map nftproxy fills
    ((A, P, S), (V,)),  # service-ips
    ((A, P, S, N), (A, S)),  # backends-N
    ((A,), ()),  # cluster-ips, hairpin
    ((A, P, S), ()),  # firewall-ips
    ((S,), ()),  # applied ports
]
CHAINS = ("clusterip/pick-3", "external/pick-1", "sticky-0")


def _addresses(family: Family) -> st.SearchStrategy[str]:
    if family == Family.IP:
        return st.ip_addresses(v=4).map(str)
    return st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(a)))


def _component(kind: DataType, family: Family) -> st.SearchStrategy[str]:
    if kind == A:
        return _addresses(family)
    if kind == P:
        return st.sampled_from(["tcp", "udp", "sctp"])
    if kind == S:
        return st.integers(0, 65535).map(str)
    return st.integers(0, 255).map(str)


def _value(kinds: tuple[DataType, ...], family: Family) -> st.SearchStrategy[tuple[str, ...]]:
    if kinds == (V,):
        return st.one_of(
            st.sampled_from([("drop",), ("accept",)]),
            st.tuples(st.sampled_from(["goto", "jump"]), st.sampled_from(CHAINS)),
        )
    return st.tuples(*(_component(k, family) for k in kinds))


@st.composite
def filled_sets(draw: st.DrawFn) -> tuple[Family, Set]:
    family = draw(st.sampled_from(Family))
    key, value = draw(st.sampled_from(SHAPES))
    keys = st.tuples(*(_component(k, family) for k in key))
    comments = st.none() | st.text("abcdefghijklmnopqrstuvwxyz0123456789-/.", max_size=128)
    elements = draw(
        st.lists(
            st.tuples(keys, _value(value, family) if value else st.none(), comments),
            max_size=40,
            unique_by=lambda e: e[0],
        )
    )
    return family, Set("a", key, value, elements=tuple(Element(*e) for e in elements))


def _table(family: Family, s: Set) -> Table:
    """s filled (by nft) and an empty copy named b, with the chains verdicts name."""
    chains = tuple(Chain(name) for name in CHAINS)
    empty = dataclasses.replace(s, name="b", elements=())
    return Table(family, "w", chains, (s, empty))


def _dumped(sock: Socket, family: Family, name: str) -> list[tuple[bytes, ...]]:
    request = {ELEM_LIST_TABLE: string("w"), ELEM_LIST_SET: string(name)}
    bodies = sock.bodies(Message.GETSETELEM, FAMILIES[family], request)
    kinds = (ELEM_KEY, ELEM_DATA, ELEM_USERDATA)
    return sorted(tuple(a.get(k, b"") for k in kinds) for a in _element_attrs(bodies))


@pytest.fixture(scope="module")
def kernel() -> Iterator[Libnftables]:
    with Lab("write") as lab:
        yield Libnftables(lab.node)


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.kernel
@given(case=filled_sets())
def test_written_elements_are_the_bytes_nft_writes(
    kernel: Libnftables, case: tuple[Family, Set]
) -> None:
    family, filled = case
    assert writable(filled)
    table = _table(family, filled)
    kernel.run(render_script(Ruleset((table,)), "w"))
    empty = table.sets[1]
    kernel.write_elements(
        ElementStage((Transaction(family, "w", (AddElements(empty, filled.elements),)),))
    )
    sock = kernel._sock  # the kernel's own socket, in its namespace
    assert _dumped(sock, family, "b") == _dumped(sock, family, "a")
    kernel.run(f"delete table {family.value} w\n")


@pytest.mark.kernel
def test_elements_span_requests_and_a_refusal_leaves_nothing(kernel: Libnftables) -> None:
    """More elements than one request holds go in several, one transaction: a
    refused one (a key already holding another value) leaves none of them."""
    s = Set("a", (A, S), (A, S))
    many = tuple(
        Element((f"10.0.{i >> 8}.{i & 255}", "80"), ("10.9.0.1", str(i)), f"element {i}")
        for i in range(3000)
    )
    assert sum(len(e.comment or "") + 40 for e in many) > 2 * MESSAGE_BYTES
    table = _table(Family.IP, s)
    kernel.run(render_script(Ruleset((table,)), "w"))
    empty = table.sets[1]
    clash = Element(many[0].key, ("10.9.0.2", "1"))

    def write(elements: tuple[Element, ...]) -> None:
        tx = Transaction(Family.IP, "w", (AddElements(empty, elements),))
        kernel.write_elements(ElementStage((tx,)))

    write(many[:1])
    with pytest.raises(NftError, match="exists"):
        write((*many[1:], clash))
    read = kernel.read_set(Family.IP, "w", "b")
    assert read is not None and read.elements == many[:1]
    write(many[1:])
    read = kernel.read_set(Family.IP, "w", "b")
    assert read is not None and sorted(read.elements) == sorted(many)
    with pytest.raises(NftError, match=r"set b: element .+10\.0\.0\.300"):
        write((Element(("10.0.0.300", "80"), ("10.9.0.1", "1")),))
    kernel.run("delete table ip w\n")
