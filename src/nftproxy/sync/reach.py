"""Which endpoints each UDP/SCTP Service entry reaches, read from a table's rules. Pure.

The rules are followed as the kernel would follow them for a new connection:
the entry's element in ``service-ips`` names a chain; from there every
``goto``/``jump`` is taken, and every ``dnat`` is collected (a fixed endpoint in a
sticky chain, or the endpoints a ``dnat ... map`` holds for the entry). Used to
find stale conntrack entries from what was applied, never from the kernel.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from nftproxy.nft.conntrack import PROTOCOLS, EntryKey, Target
from nftproxy.nft.model import Chain, Dnat, DnatMap, Family, Numgen, Table, Value, Verdict
from nftproxy.ruleset import names

Reach = dict[EntryKey, frozenset[Target]]


class _Shape(NamedTuple):
    """What a chain and the chains it goes to do, the same for every entry using it."""

    fixed: frozenset[Target]  # endpoints of plain dnat rules (sticky chains)
    maps: frozenset[tuple[str, int]]  # (map, random modulus) of dnat ... map rules
    chains: frozenset[str]  # every chain passed through


class _Walker:
    def __init__(self, table: Table) -> None:
        self.chains = {c.name: c for c in table.chains}
        self.maps = {s.name: s for s in table.sets if s.is_map}
        self.values: dict[str, dict[tuple[str, ...], Value | None]] = {}
        self.shapes: dict[str, _Shape] = {}

    def value(self, map_name: str, key: tuple[str, ...]) -> Value | None:
        if map_name not in self.values:
            found = self.maps.get(map_name)
            self.values[map_name] = {e.key: e.value for e in found.elements} if found else {}
        return self.values[map_name].get(key)

    def shape(self, chain: str, seen: frozenset[str] = frozenset()) -> _Shape:
        """Worked out once per chain."""
        if chain in self.shapes:
            return self.shapes[chain]
        fixed: set[Target] = set()
        maps: set[tuple[str, int]] = set()
        chains = {chain}
        found: Chain | None = self.chains.get(chain)
        for rule in found.rules if found is not None and chain not in seen else ():
            for term in rule.terms:
                if isinstance(term, Dnat):
                    fixed.add((term.addr, term.port))
                elif isinstance(term, DnatMap) and isinstance(term.key[-1], Numgen):
                    maps.add((term.map, term.key[-1].modulus))
                elif isinstance(term, Verdict) and term.chain is not None:
                    inner = self.shape(term.chain, seen | {chain})
                    fixed |= inner.fixed
                    maps |= inner.maps
                    chains |= inner.chains
        self.shapes[chain] = _Shape(frozenset(fixed), frozenset(maps), frozenset(chains))
        return self.shapes[chain]

    def targets(self, shape: _Shape, key: tuple[str, ...]) -> frozenset[Target]:
        """Where a new connection to the entry ``key`` may go."""
        if not shape.maps:
            return shape.fixed
        found = set(shape.fixed)
        for name, modulus in shape.maps:
            for i in range(modulus):
                v = self.value(name, (*key, str(i)))
                if v is not None and len(v) == 2:
                    found.add((v[0], int(v[1])))
        return frozenset(found)


def reach(
    table: Table | None,
    keys: Collection[EntryKey] | None = None,
    chains: Collection[str] = (),
) -> Reach:
    """The endpoints UDP/SCTP entries of table can be DNATed to (entries without
    endpoints are absent): all of them, or only those in ``keys`` and those whose
    rules pass through one of ``chains``."""
    if table is None:
        return {}
    walker = _Walker(table)
    dispatch = walker.maps.get(names.SERVICE_IPS)
    out: Reach = {}
    for e in dispatch.elements if dispatch else ():
        addr, proto, port = e.key
        if proto not in PROTOCOLS or e.value is None or len(e.value) != 2:
            continue
        entry = (proto, addr, int(port))
        shape = walker.shape(e.value[1])
        if keys is None or entry in keys or not shape.chains.isdisjoint(chains):
            out[entry] = walker.targets(shape, e.key)
    return out


def reach_all(
    tables: dict[Family, Table | None],
    keys: Collection[EntryKey] | None = None,
    chains: Collection[str] = (),
) -> Reach:
    """:func:`reach` of every family's table, together."""
    out: Reach = {}
    for table in tables.values():
        out.update(reach(table, keys, chains))
    return out
