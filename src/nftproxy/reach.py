"""Which endpoints each UDP/SCTP Service entry reaches, read from a table's rules. Pure.

The rules are followed as the kernel would follow them for a new connection:
the entry's element in ``service-ips`` names a chain; from there every
``goto``/``jump`` is taken, and every ``dnat`` is collected (a fixed endpoint in a
sticky chain, or the endpoints a ``dnat ... map`` holds for the entry). Used to
find stale conntrack entries from what was applied, never from the kernel.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from nftproxy import names
from nftproxy.conntrack import PROTOCOLS, EntryKey, Target
from nftproxy.nft.model import Chain, Dnat, DnatMap, Family, Set, Table, Verdict

Reach = dict[EntryKey, frozenset[Target]]


class _Walker:
    def __init__(self, table: Table) -> None:
        self.chains = {c.name: c for c in table.chains}
        self.maps = {s.name: s for s in table.sets if s.is_map}
        self.indexes: dict[str, dict[tuple[str, ...], list[Target]]] = {}

    def index(self, name: str) -> dict[tuple[str, ...], list[Target]]:
        """A ``dnat ... map``'s endpoints by entry (its key without the random index)."""
        if name not in self.indexes:
            by_entry: dict[tuple[str, ...], list[Target]] = defaultdict(list)
            dnat_map: Set | None = self.maps.get(name)
            for e in dnat_map.elements if dnat_map else ():
                if e.value is not None and len(e.value) == 2:
                    by_entry[e.key[:3]].append((e.value[0], int(e.value[1])))
            self.indexes[name] = by_entry
        return self.indexes[name]

    def targets(self, chain: str, key: tuple[str, ...], seen: set[str]) -> Iterator[Target]:
        if chain in seen or chain not in self.chains:
            return
        seen.add(chain)
        found: Chain = self.chains[chain]
        for rule in found.rules:
            for term in rule.terms:
                if isinstance(term, Dnat):
                    yield term.addr, term.port
                elif isinstance(term, DnatMap):
                    yield from self.index(term.map).get(key, ())
                elif isinstance(term, Verdict) and term.chain is not None:
                    yield from self.targets(term.chain, key, seen)


def reach(table: Table | None) -> Reach:
    """The endpoints each UDP/SCTP entry of table can be DNATed to (entries without
    endpoints are absent)."""
    if table is None:
        return {}
    walker = _Walker(table)
    dispatch = walker.maps.get(names.SERVICE_IPS)
    out: Reach = {}
    for e in dispatch.elements if dispatch else ():
        addr, proto, port = e.key
        if proto in PROTOCOLS and e.value is not None and len(e.value) == 2:
            found = frozenset(walker.targets(e.value[1], e.key, set()))
            out[(proto, addr, int(port))] = found
    return out


def reach_all(tables: dict[Family, Table | None]) -> Reach:
    """:func:`reach` of every family's table, together."""
    out: Reach = {}
    for table in tables.values():
        out.update(reach(table))
    return out
