"""Live state from nft's point of view: ``nft -j list table`` output to a ``Table``.

The second reader, next to the netlink one (:mod:`nftproxy.nft.read`), which
is about four times faster; ``diff --reader nft`` uses this one, and the tests
check that both agree. nft's JSON is read into exactly the objects
:mod:`nftproxy.ruleset.build` makes,
so rules compare by meaning: nft's own normalisations (``reject with tcp reset``
swallowing its ``meta l4proto tcp`` match, ``ct state new`` listed as a set
membership, a /32 prefix listed as an address) are undone here, in one place.
Anything nftproxy never writes is kept as a :class:`~nftproxy.nft.model.Raw` term.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from nftproxy.nft.model import (
    BaseHook,
    Chain,
    ChainType,
    DataType,
    Dnat,
    DnatMap,
    Element,
    Expr,
    Family,
    Field,
    Hook,
    Key,
    MarkSet,
    MarkTest,
    Masquerade,
    Match,
    Numgen,
    Op,
    Raw,
    Reject,
    Rule,
    Set,
    SetRef,
    SetUpdate,
    Table,
    Term,
    Value,
    Verdict,
    VerdictKind,
    VMap,
)

_TYPES = {
    "ipv4_addr": DataType.ADDR,
    "ipv6_addr": DataType.ADDR,
    "inet_proto": DataType.PROTO,
    "inet_service": DataType.SERVICE,
    "integer": DataType.INDEX,
    "verdict": DataType.VERDICT,
}
_META = {"l4proto": Field.L4PROTO, "mark": Field.MARK, "iifname": Field.IIFNAME}
_CT = {"state": Field.CT_STATE, "status": Field.CT_STATUS}
_VERDICTS = {v.value for v in VerdictKind}


class UnknownExpressionError(ValueError):
    """An expression nftproxy never writes."""


def _expr(node: Any) -> Expr:
    if not isinstance(node, dict) or len(node) != 1:
        raise UnknownExpressionError(node)
    ((kind, body),) = node.items()
    if kind == "payload" and body.get("protocol") in ("ip", "ip6"):
        return {"saddr": Field.SADDR, "daddr": Field.DADDR}[body["field"]]
    if kind == "payload" and body == {"protocol": "th", "field": "dport"}:
        return Field.DPORT
    if kind == "meta" and body.get("key") in _META:
        return _META[body["key"]]
    if kind == "ct" and body.get("key") in _CT and "dir" not in body:
        return _CT[body["key"]]
    if kind == "fib" and body == {"result": "type", "flags": ["saddr"]}:
        return Field.FIB_SADDR_TYPE
    if kind == "numgen" and body.get("mode") == "random":
        return Numgen(int(body["mod"]), int(body.get("offset", 0)))
    raise UnknownExpressionError(node)


def _key(node: Any) -> Key:
    if isinstance(node, dict) and "concat" in node:
        return tuple(_expr(n) for n in node["concat"])
    return (_expr(node),)


def _atom(node: Any) -> str:
    """One key component as nftproxy writes it: text, with prefixes as CIDRs."""
    if isinstance(node, dict) and "prefix" in node:
        p = node["prefix"]
        return f"{p['addr']}/{p['len']}"
    if isinstance(node, dict) and "range" in node:
        low, high = node["range"]
        return f"{_atom(low)}-{_atom(high)}"
    if isinstance(node, (dict, list)):
        raise UnknownExpressionError(node)
    return str(node)


def _value(node: Any) -> str | tuple[str, ...] | SetRef:
    if isinstance(node, str) and node.startswith("@"):
        return SetRef(node[1:])
    if isinstance(node, dict) and "set" in node:
        return tuple(_atom(n) for n in node["set"])
    if isinstance(node, list):  # flag words listed as a set, e.g. ct state { new }
        return node[0] if len(node) == 1 else tuple(_atom(n) for n in node)
    return _atom(node)


def _match(body: dict[str, Any]) -> Term:
    left, right, op = body["left"], body["right"], body["op"]
    if isinstance(left, dict) and "&" in left and right == 0:
        inner, bits = left["&"]
        if _expr(inner) == Field.MARK and op in ("==", "!="):
            return MarkTest(int(bits), set_=op == "!=")
    if op not in ("==", "!=", "in"):
        raise UnknownExpressionError(body)
    return Match(_key(left), _value(right), Op.NE if op == "!=" else Op.EQ)


def _statement(kind: str, body: Any) -> list[Term]:  # noqa: PLR0911 - one branch per statement
    if kind in _VERDICTS:
        target = body.get("target") if isinstance(body, dict) else None
        return [Verdict(VerdictKind(kind), target)]
    if kind == "match":
        return [_match(body)]
    if kind == "reject":
        if isinstance(body, dict) and body.get("type") == "tcp reset":
            # nft lists "meta l4proto tcp reject with tcp reset" without its match.
            return [Match((Field.L4PROTO,), "tcp"), Reject(tcp_reset=True)]
        if body is None or body.get("expr") in (None, "port-unreachable"):
            return [Reject()]
    if kind == "vmap":
        return [VMap(_key(body["key"]), body["data"].lstrip("@"))]
    if kind == "dnat" and isinstance(body.get("addr"), dict) and "map" in body["addr"]:
        m = body["addr"]["map"]
        return [DnatMap(_key(m["key"]), m["data"].lstrip("@"))]
    if kind == "dnat" and isinstance(body.get("addr"), str) and "port" in body:
        return [Dnat(body["addr"], int(body["port"]))]
    if kind == "mangle" and _expr(body["key"]) == Field.MARK:
        ((op, (inner, bits)),) = body["value"].items()
        if _expr(inner) == Field.MARK and op in ("|", "^"):
            return [MarkSet(int(bits), xor=op == "^")]
    if kind == "masquerade" and body == {"flags": "fully-random"}:
        return [Masquerade()]
    if kind == "set" and body.get("op") == "update":
        return [SetUpdate(body["set"].lstrip("@"), _key(body["elem"]))]
    raise UnknownExpressionError({kind: body})


def parse_rule(exprs: list[dict[str, Any]], comment: str | None = None) -> Rule:
    """One rule's JSON statements as terms (unknown ones kept raw)."""
    terms: list[Term] = []
    for node in exprs:
        ((kind, body),) = node.items()
        try:
            terms.extend(_statement(kind, body))
        except (UnknownExpressionError, KeyError, TypeError, ValueError):
            terms.append(Raw(json.dumps(node, sort_keys=True)))
    return Rule(tuple(terms), comment)


def _element_part(node: Any) -> tuple[str, ...]:
    if isinstance(node, dict) and "elem" in node:
        node = node["elem"]["val"]
    if isinstance(node, dict) and "concat" in node:
        return tuple(_atom(n) for n in node["concat"])
    return (_atom(node),)


def _element_value(node: Any) -> Value:
    if isinstance(node, dict) and len(node) == 1:
        ((kind, body),) = node.items()
        if kind in _VERDICTS:
            return (kind, body["target"]) if isinstance(body, dict) else (kind,)
    if isinstance(node, str) and node in _VERDICTS:
        return (node,)
    return _element_part(node)


def _element(node: Any) -> Element:
    if isinstance(node, list):  # a map element: [key, value]
        key, value = node
        comment = key["elem"].get("comment") if isinstance(key, dict) and "elem" in key else None
        return Element(_element_part(key), _element_value(value), comment)
    comment = node["elem"].get("comment") if isinstance(node, dict) and "elem" in node else None
    return Element(_element_part(node), None, comment)


def _types(spec: Any) -> tuple[DataType, ...]:
    names = spec if isinstance(spec, list) else str(spec).split(" . ")
    return tuple(_TYPES.get(n, DataType.OTHER) for n in names)


def parse_set(body: dict[str, Any]) -> Set:
    """A set or map with its elements."""
    flags = body.get("flags") or []
    flags = [flags] if isinstance(flags, str) else flags
    dynamic = "dynamic" in flags or "timeout" in flags
    return Set(
        name=body["name"],
        key=_types(body["type"]),
        value=_types(body["map"]) if "map" in body else (),
        interval="interval" in flags,
        timeout=body.get("timeout"),
        dynamic=dynamic,
        elements=tuple(_element(e) for e in body.get("elem") or ()),
        comment=body.get("comment"),
        size=body.get("size") if dynamic else None,
        counter=any("counter" in stmt for stmt in body.get("stmt") or ()),
    )


def _base(body: dict[str, Any]) -> BaseHook | None:
    if "hook" not in body:
        return None
    policy = VerdictKind(body.get("policy", "accept"))
    return BaseHook(ChainType(body["type"]), Hook(body["hook"]), int(body["prio"]), policy)


def parse_table(listing: dict[str, Any], family: Family, name: str) -> Table | None:
    """The table named in an ``nft -j list table`` answer, or None when absent."""
    objects = listing.get("nftables", [])
    # A table's flags are not read: nft 1.0.6 prints garbage for them in JSON (or
    # stops the output there), so only the netlink reader sees a dormant table.
    if not any("table" in o and o["table"]["name"] == name for o in objects):
        return None
    rules: dict[str, list[Rule]] = defaultdict(list)
    chains: list[tuple[str, BaseHook | None]] = []
    sets: list[Set] = []
    for obj in objects:
        if "chain" in obj:
            chains.append((obj["chain"]["name"], _base(obj["chain"])))
        elif "rule" in obj:
            r = obj["rule"]
            rules[r["chain"]].append(parse_rule(r["expr"], r.get("comment")))
        elif "set" in obj or "map" in obj:
            sets.append(parse_set(obj.get("set") or obj["map"]))
    return Table(
        family=family,
        name=name,
        chains=tuple(Chain(n, tuple(rules[n]), base) for n, base in chains),
        sets=tuple(sets),
    )
