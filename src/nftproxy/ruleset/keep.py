"""Owners kept at what the kernel holds: a Service whose input could not be read. Pure.

``apply`` reads manifests, not the API: when a Service (or one of its
EndpointSlices, or a Pod with hostPorts) is invalid there is no earlier version of
it to build from, as ``run`` has in its cache. What the kernel holds for it is the
earlier version: :func:`keep_owners` takes that owner's part of the tables the
kernel holds and puts it into the desired tables in place of whatever the desired
tables give it, so that the plan neither changes nor removes it.

An owner's part of a table, found from the kernel's state alone:

- its entries: the elements of ``service-ips`` and ``no-endpoint-services`` whose
  comment names it (``namespace/name/protocol/port``, as the builder writes it);
- every element keyed by one of those entries (``backends-N``, ``firewall-*``),
  and its ClusterIPs in ``cluster-ips``;
- the chains the entries' verdicts lead to, and the chains and sets those use
  (shared ones such as ``pick-3`` with only the owner's elements);
- the ``hairpin`` elements of the endpoints those elements and chains reach.

An entry another owner now claims in the desired tables is left to that owner.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from nftproxy.nft.model import Dnat, Element, Family, Ruleset, Table
from nftproxy.nft.render import chain_targets, set_references
from nftproxy.proxy.state import ProxyState
from nftproxy.ruleset import names
from nftproxy.ruleset.build import SETS, fixed_table, unique

Owner = tuple[str, str]
"""``(namespace, name)`` of a Service or a Pod with hostPorts."""

ENTRY_SETS = (names.SERVICE_IPS, names.NO_ENDPOINT_SERVICES)
"""The maps whose elements are a Service's entries, commented with its port's name."""
FIXED_SETS = frozenset(row[0] for row in SETS)
"""Sets every table has, Services or not (``pod-cidrs`` is used only by their chains)."""
_JUMPS = ("goto", "jump")


def comment_names(comment: str | None, owner: Owner) -> bool:
    """Whether an entry's comment (``namespace/name/protocol/port``, see
    :func:`nftproxy.ruleset.names.comment`) belongs to owner. A comment shortened to fit
    keeps the start of every part, so its parts are compared as prefixes there."""
    if not comment:
        return False
    parts, shortened = names.comment_parts(comment)
    if len(parts) < 2:
        return False
    ns, name = owner
    if shortened:
        return ns.startswith(parts[0]) and name.startswith(parts[1])
    return (parts[0], parts[1]) == (ns, name)


def entries_of(table: Table, owners: Collection[Owner]) -> dict[tuple[str, ...], Owner]:
    """The entries (address, protocol, port) the owners hold in table."""
    out: dict[tuple[str, ...], Owner] = {}
    for s in table.sets:
        if s.name in ENTRY_SETS:
            for e in s.elements:
                owner = next((o for o in owners if comment_names(e.comment, o)), None)
                if owner is not None:
                    out[e.key[:3]] = owner
    return out


@dataclass
class _Refs:
    """The chains and sets some elements lead to."""

    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    """Endpoint addresses the chains DNAT to (for ``hairpin``)."""


def _references(table: Table, elements: Iterable[Element], roots: Iterable[str] = ()) -> _Refs:
    """Every chain the elements' verdicts (and the root chains) lead to, and every
    set those chains use."""
    chains = {c.name: c for c in table.chains}
    refs = _Refs()
    todo = [*roots]
    for e in elements:
        if e.value is not None and len(e.value) == 2 and e.value[0] in _JUMPS:
            todo.append(e.value[1])
    while todo:
        name = todo.pop()
        if name in refs.chains or name not in chains:
            continue
        refs.chains.add(name)
        todo.extend(chain_targets(chains[name]))
        refs.sets.update(set_references(chains[name]))
        refs.addresses.update(
            t.addr for r in chains[name].rules for t in r.terms if isinstance(t, Dnat)
        )
    return refs


def _without_entries(table: Table, entries: Collection[tuple[str, ...]]) -> Table:
    """table without the elements keyed by entries, and without what only they used
    (chains, sets, ClusterIPs and hairpin elements)."""
    if not entries:
        return table
    gone = [e for s in table.sets for e in s.elements if e.key[:3] in entries]
    sets = tuple(
        replace(s, elements=tuple(e for e in s.elements if e.key[:3] not in entries))
        for s in table.sets
    )
    stripped = replace(table, sets=sets)
    used = _references(stripped, _all_elements(stripped), _base_chains(stripped))
    used.addresses.update(_targets(_all_elements(stripped)))
    orphans = _references(table, gone)
    orphans.addresses.update(_targets(gone))
    still = {e.key[0] for s in sets if s.name in ENTRY_SETS for e in s.elements}
    lost_ips = {k[0] for k in entries} - still
    lost_hairpin = orphans.addresses - used.addresses

    def kept(set_name: str, e: Element) -> bool:
        if set_name == names.CLUSTER_IPS:
            return e.key[0] not in lost_ips
        if set_name == names.HAIRPIN:
            return e.key[0] not in lost_hairpin
        return True

    return replace(
        stripped,
        chains=tuple(
            c for c in stripped.chains if c.name in used.chains or c.name not in orphans.chains
        ),
        sets=tuple(
            replace(s, elements=tuple(e for e in s.elements if kept(s.name, e)))
            for s in sets
            if s.name in FIXED_SETS or s.name in used.sets or s.name not in orphans.sets
        ),
    )


def _targets(elements: Iterable[Element]) -> set[str]:
    """The endpoint addresses map elements lead to."""
    return {
        e.value[0] for e in elements if e.value and len(e.value) == 2 and e.value[0] not in _JUMPS
    }


def _all_elements(table: Table) -> list[Element]:
    return [e for s in table.sets for e in s.elements]


def _base_chains(table: Table) -> list[str]:
    return [c.name for c in table.chains if c.base is not None]


def _held_part(held: Table, entries: Collection[tuple[str, ...]]) -> Table:
    """What held has of entries: their elements, chains and sets (those with only
    the entries' elements), and the hairpin elements of their endpoints."""
    addrs = {k[0] for k in entries}
    keyed = [e for s in held.sets for e in s.elements if e.key[:3] in entries]
    refs = _references(held, keyed)
    refs.addresses.update(_targets(keyed))

    def mine(set_name: str, e: Element) -> bool:
        if set_name == names.CLUSTER_IPS:
            return e.key[0] in addrs
        if set_name == names.HAIRPIN:
            return e.key[0] in refs.addresses
        return e.key[:3] in entries

    sets = tuple(
        replace(s, elements=tuple(e for e in s.elements if mine(s.name, e)))
        for s in held.sets
        if s.name in refs.sets or any(mine(s.name, e) for e in s.elements)
    )
    chains = tuple(c for c in held.chains if c.name in refs.chains)
    return replace(held, chains=chains, sets=sets)


def _merged(want: Table, part: Table) -> Table:
    """want with part's elements added to its sets, and part's chains and sets that
    want lacks."""
    extra = {s.name: s for s in part.sets}
    sets = [
        replace(s, elements=unique((*s.elements, *extra.pop(s.name).elements)))
        if s.name in extra
        else s
        for s in want.sets
    ]
    have = {c.name for c in want.chains}
    chains = [c for c in part.chains if c.name not in have]
    bases = [c for c in want.chains if c.base is not None]
    regular = [c for c in want.chains if c.base is None]
    return replace(
        want,
        chains=(*regular, *chains, *bases),
        sets=(*sets, *sorted(extra.values(), key=lambda s: s.name)),
    )


@dataclass(frozen=True)
class Kept:
    """What :func:`keep_owners` kept of each owner at the kernel's state."""

    entries: Mapping[Owner, int]
    """Entries kept per owner (an owner the kernel holds nothing of is absent)."""


def keep_owners(
    desired: Mapping[Family, Table | None],
    current: Mapping[Family, Table | None],
    owners: Collection[Owner],
    empty: Mapping[Family, Table],
) -> tuple[dict[Family, Table | None], Kept]:
    """The desired tables with the owners' parts as current holds them.

    ``empty`` gives each family's table without any Service, for a family where the
    desired tables have none but the kernel holds a kept owner's part."""
    out: dict[Family, Table | None] = dict(desired)
    counts: dict[Owner, int] = {}
    if not owners:
        return out, Kept(counts)
    for family, held in current.items():
        if held is None:
            continue
        held_entries = entries_of(held, owners)
        want = desired.get(family) or empty[family]
        stripped = _without_entries(want, entries_of(want, owners))
        claimed = {e.key[:3] for s in stripped.sets if s.name in ENTRY_SETS for e in s.elements}
        kept = {k: o for k, o in held_entries.items() if k not in claimed}
        if not kept:
            out[family] = stripped if desired.get(family) is not None else None
            continue
        out[family] = _merged(stripped, _held_part(held, kept))
        for o in kept.values():
            counts[o] = counts.get(o, 0) + 1
    return out, Kept(counts)


def kept_ruleset(
    ruleset: Ruleset,
    state: ProxyState,
    current: Mapping[Family, Table | None] | None,
    owners: Collection[Owner],
) -> tuple[Ruleset, Kept]:
    """ruleset with the owners' parts as current holds them (ruleset itself when
    there is no owner to keep or nothing read)."""
    if not owners or current is None:
        return ruleset, Kept({})
    empty = {fs.node.family: fixed_table(fs.node) for fs in state.families}
    desired = {f: next((t for t in ruleset.tables if t.family == f), None) for f in empty}
    tables, kept = keep_owners(desired, current, owners, empty)
    present = tuple(t for t in tables.values() if t is not None)
    absent = tuple(f for f, t in tables.items() if t is None)
    return Ruleset(present, absent), kept


def holds_services(current: Mapping[Family, Table | None]) -> bool:
    """Whether tables hold any Service entry."""
    return any(
        s.elements
        for t in current.values()
        if t is not None
        for s in t.sets
        if s.name in ENTRY_SETS
    )
