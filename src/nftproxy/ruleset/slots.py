"""Endpoints keep their slots in ``backends-N``, so one endpoint replaced is one element.

``backends-N`` maps ``entry . index`` to an endpoint, the index a random number in
[0, N). The builder numbers a group's endpoints in sorted order, so a new Pod
whose address sorts first would move every other endpoint one slot on: 50
element changes for one endpoint at 50 endpoints, per entry. Which endpoint has
which slot does not matter to the traffic (each is 1/n), so before a plan the
desired maps are aligned to what the kernel holds: an endpoint that stays keeps
its slot if the slot still exists, and the new endpoints fill the slots left
free. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from nftproxy.nft.model import Element, Family, Set, Table, Value
from nftproxy.ruleset import names


def is_backend_map(name: str) -> bool:
    """Whether a set is a backends map (``backends-N``, ``local-backends-N``)."""
    return name.startswith((f"{names.BACKENDS}-", f"{names.LOCAL_BACKENDS}-"))


Slots = dict[tuple[str, tuple[str, ...]], dict[Value, int]]
"""``(map name, entry)`` -> endpoint -> its slot, as some table holds them."""


def slots_of(sets: Mapping[str, Iterable[Element]]) -> Slots:
    """The slots the backend maps among sets (by name) give each endpoint."""
    out: Slots = {}
    for name in filter(is_backend_map, sets):
        for e in sets[name]:
            if e.value is not None:
                out.setdefault((name, e.key[:-1]), {})[e.value] = int(e.key[-1])
    return out


def table_slots(table: Table | None) -> Slots:
    """The slots a table's backend maps hold (none for no table)."""
    if table is None:
        return {}
    return slots_of({s.name: s.elements for s in table.sets if is_backend_map(s.name)})


def aligned(name: str, elements: tuple[Element, ...], slots: Slots) -> tuple[Element, ...]:
    """A backend map's elements renumbered to keep the slots held where they can."""
    groups: dict[tuple[str, ...], list[Element]] = {}
    for e in elements:
        groups.setdefault(e.key[:-1], []).append(e)
    out: list[Element] = []
    for entry, group in groups.items():
        held = slots.get((name, entry))
        out.extend(group if held is None else _renumbered(group, held))
    return tuple(out)


def _renumbered(group: list[Element], held: dict[Value, int]) -> list[Element]:
    n = len(group)
    placed: list[Element | None] = [None] * n
    rest: list[Element] = []
    for e in group:
        slot = held.get(e.value) if e.value is not None else None
        if slot is not None and slot < n and placed[slot] is None:
            placed[slot] = e
        else:
            rest.append(e)
    free = iter(rest)
    out = []
    for slot, kept in enumerate(placed):
        e = kept if kept is not None else next(free)
        key = (*e.key[:-1], str(slot))
        out.append(e if e.key == key else e._replace(key=key))
    return out


def align_elements(
    elements: Mapping[str, tuple[Element, ...]], slots: Slots
) -> dict[str, tuple[Element, ...]]:
    """Elements by set name, the backend maps' aligned to slots."""
    return {
        name: aligned(name, els, slots) if slots and is_backend_map(name) else els
        for name, els in elements.items()
    }


def align_set(s: Set, slots: Slots) -> Set:
    """A set aligned to slots (unchanged unless it is a backend map)."""
    if not slots or not is_backend_map(s.name):
        return s
    return replace(s, elements=aligned(s.name, s.elements, slots))


def align_table(desired: Table | None, current: Table | None) -> Table | None:
    """desired with its backend maps aligned to the slots current holds."""
    slots = table_slots(current)
    if desired is None or not slots:
        return desired
    return replace(desired, sets=tuple(align_set(s, slots) for s in desired.sets))


def align_tables(
    desired: Mapping[Family, Table | None], current: Mapping[Family, Table | None]
) -> dict[Family, Table | None]:
    """Every family's desired table aligned to what the kernel holds."""
    return {f: align_table(t, current.get(f)) for f, t in desired.items()}
