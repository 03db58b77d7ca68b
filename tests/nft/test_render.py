"""The renderer: the one place that writes nft syntax."""

from __future__ import annotations

from helpers import endpoint, service, slice_, state_of

from nftproxy.nft.model import (
    Chain,
    DataType,
    Dnat,
    Element,
    Family,
    Field,
    Match,
    Numgen,
    Op,
    Rule,
    Ruleset,
    Set,
    SetRef,
    Table,
    Verdict,
    VerdictKind,
)
from nftproxy.nft.render import (
    ordered_chains,
    render_batch,
    render_rule,
    render_script,
    render_table,
)
from nftproxy.nft.stages import ElementStage, load_stages
from nftproxy.nft.transaction import AddElements, Batch
from nftproxy.nft.write import writable
from nftproxy.ruleset.build import build


def test_rule_terms() -> None:
    rule = Rule(
        (
            Match((Field.SADDR,), SetRef("pod-cidrs"), Op.NE),
            Verdict(VerdictKind.JUMP, "mark-for-masquerade"),
        )
    )
    assert render_rule(rule, Family.IP) == "ip saddr != @pod-cidrs jump mark-for-masquerade"
    assert render_rule(rule, Family.IP6) == "ip6 saddr != @pod-cidrs jump mark-for-masquerade"


def test_ipv6_dnat_target_is_bracketed() -> None:
    assert render_rule(Rule((Dnat("fd00::1", 80),)), Family.IP6) == "dnat to [fd00::1]:80"


def test_numgen_match() -> None:
    assert render_rule(Rule((Match((Numgen(3),), "0"),)), Family.IP) == "numgen random mod 3 0"


def test_map_with_index_uses_typeof_and_comments_precede_values() -> None:
    s = Set(
        "backends",
        (DataType.ADDR, DataType.PROTO, DataType.SERVICE, DataType.INDEX),
        (DataType.ADDR, DataType.SERVICE),
        elements=(Element(("10.0.0.1", "tcp", "80", "0"), ("10.1.0.1", "8080"), "ns/a"),),
    )
    text = render_table(Table(Family.IP, "t", sets=(s,)))
    assert (
        "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport"
        in text
    )
    assert '10.0.0.1 . tcp . 80 . 0 comment "ns/a" : 10.1.0.1 . 8080' in text


def test_jump_targets_come_first() -> None:
    a = Chain("a", (Rule((Verdict(VerdictKind.GOTO, "b"),)),))
    b = Chain("b", (Rule((Verdict(VerdictKind.GOTO, "c"),)),))
    c = Chain("c")
    assert [x.name for x in ordered_chains([a, b, c])] == ["c", "b", "a"]


def test_script_replaces_present_and_removes_absent_tables() -> None:
    script = render_script(Ruleset((Table(Family.IP, "nftproxy"),), (Family.IP6,)), "nftproxy")
    assert script.splitlines()[:4] == [
        "add table ip nftproxy",
        "delete table ip nftproxy",
        "add table ip6 nftproxy",
        "delete table ip6 nftproxy",
    ]
    assert "table ip nftproxy {" in script and "table ip6 nftproxy {" not in script


def _elements_in(script: str) -> int:
    """Elements in a stage's ``add element ... { a, b }`` lines (no comma in them)."""
    return sum(line.count(", ") + 1 for line in script.splitlines() if "add element" in line)


def _written(stage: ElementStage) -> list[AddElements]:
    return [c for tx in stage.transactions for c in tx.changes if isinstance(c, AddElements)]


def test_a_fresh_load_is_staged_and_every_element_goes_once() -> None:
    """The first stage declares the tables dormant with empty sets; the elements
    follow in stages of at most per_stage (nft's scripts for interval sets, netlink
    for the others); the last stage wakes the tables."""
    docs = (service(), slice_("svc", *(endpoint(f"10.1.0.{i}") for i in range(9))))
    rs = build(state_of(*docs))
    whole = Batch("nftproxy", load=rs)
    assert load_stages(whole, 4) == [render_batch(whole)]  # not fresh: one script
    first, *middle, last = load_stages(Batch("nftproxy", load=rs, fresh=True), 4)
    assert isinstance(first, str) and "flags dormant" in first and "elements =" not in first
    scripts = [stage for stage in middle if isinstance(stage, str)]
    netlink = [stage for stage in middle if isinstance(stage, ElementStage)]
    assert scripts and netlink
    assert all(_elements_in(stage) <= 4 for stage in scripts)
    assert all(sum(len(c.elements) for c in _written(stage)) <= 4 for stage in netlink)
    by_netlink = {c.set.name for stage in netlink for c in _written(stage)}
    with_elements = [st for t in rs.tables for st in t.sets if st.elements]
    assert {st.name for st in with_elements if writable(st)} == by_netlink
    total = sum(len(st.elements) for st in with_elements)
    written = sum(len(c.elements) for stage in netlink for c in _written(stage))
    assert sum(map(_elements_in, scripts)) + written == total > 4
    assert isinstance(last, str) and last.startswith("add table ip nftproxy\n")
    # Encoded once, while nft loads the first stage, and sent as encoded then.
    assert all(stage.requests() is stage.requests() for stage in netlink)
