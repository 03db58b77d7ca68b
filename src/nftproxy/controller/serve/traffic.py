"""Per-Service traffic on ``/metrics``, from the kernel's own counters.

Every element of ``service-counters`` (a Service entry with endpoints) counts the
new connections the nat hook sends through it, and every element of
``no-endpoint-services`` those it refuses or drops (see
:mod:`nftproxy.ruleset.build`). A scrape reads those two sets and nothing else, on
a netlink socket of its own (:class:`~nftproxy.nft.kernel.Counters`), so a sync
never waits for it.

Kernel counters live as long as their element: a Service that loses its last
endpoint loses its ``service-counters`` element, and a table replaced whole
starts every counter at zero. The series here are Prometheus counters all the
same: each element's last value is remembered (by family, set and key) and only
what it gained is added; an element found lower than last time was made anew and
all of its value is new. What an element counted between the last scrape and its
removal is not seen.

An element is named by its comment, ``namespace/name/protocol/port`` as the
builder writes it (a comment shortened to fit keeps the start of each part, and so
do its labels). Only Services the last sync programmed count, and a Service that
is gone takes its series with it. A Pod's hostPort entries have no
``service-counters`` element (a Pod and a Service of one name must not share a
series); any other element whose comment names no such Service is left out.
Nothing is read before the first sync.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from nftproxy import log
from nftproxy.nft.model import Family
from nftproxy.nft.read import Counted
from nftproxy.nft.render import COMMENT_MAX
from nftproxy.ruleset import names
from nftproxy.sync.apply import FAMILIES

Labels = tuple[str, str, str, str]
"""``(namespace, service, port, protocol)``: ``port`` is the Service port's name."""
LABELS = ("namespace", "service", "port", "protocol")
SERIES = {
    names.SERVICE_COUNTERS: (
        "nftproxy_service_new_connections",
        "New connections each Service port received (the kernel's per-entry counters)",
    ),
    names.NO_ENDPOINT_SERVICES: (
        "nftproxy_service_rejected_connections",
        "Connections to each Service port refused or dropped for want of endpoints "
        "(a dropped SYN that is sent again counts again)",
    ),
}
LONG = COMMENT_MAX - len("///sctp") - 15
"""A Service whose namespace and name are longer together may have its entries'
comments shortened (15: the longest port name)."""

Read = Callable[[Family, str, str], list[Counted]]
"""Reads one set's element counters: (family, table, set)."""


@dataclass(frozen=True)
class Services:
    """``(namespace, name)`` of the Services programmed; ``long`` those whose
    entries' comments were shortened to fit."""

    names: frozenset[tuple[str, str]]
    long: frozenset[tuple[str, str]] = frozenset()

    def __contains__(self, name: object) -> bool:
        return name in self.names


@functools.lru_cache(maxsize=1 << 16)
def labels_of(comment: str | None) -> Labels | None:
    """A Service entry's labels from its comment (None: not such a comment).
    Remembered: the same comments come at every scrape."""
    if not comment:
        return None
    parts, _ = names.comment_parts(comment)
    if len(parts) not in (3, 4):
        return None
    ns, name, protocol = parts[:3]
    return ns, name, parts[3] if len(parts) == 4 else "", protocol.upper()


@dataclass
class _Totals:
    """What one set's elements counted, summed per Service port."""

    last: dict[tuple[Family, bytes], int] = field(default_factory=dict)
    """Each element's value at the last scrape."""
    totals: dict[Labels, int] = field(default_factory=dict)

    def add(self, family: Family, counted: Iterable[Counted], services: Services) -> None:
        for c in counted:
            was = self.last.get((family, c.key), 0)
            gained = c.packets - was if c.packets >= was else c.packets
            self.last[(family, c.key)] = c.packets
            labels = labels_of(c.comment)
            if labels is not None and gained and _known(labels, services):
                self.totals[labels] = self.totals.get(labels, 0) + gained

    def keep(self, seen: set[tuple[Family, bytes]], services: Services) -> None:
        """Forget elements gone from the kernel and Services gone from the API."""
        self.last = {k: v for k, v in self.last.items() if k in seen}
        self.totals = {k: v for k, v in self.totals.items() if _known(k, services)}


def _known(labels: Labels, services: Services) -> bool:
    """Whether the labels name a Service programmed (a shortened name: if one begins so)."""
    if (labels[0], labels[1]) in services:
        return True
    return any(ns.startswith(labels[0]) and n.startswith(labels[1]) for ns, n in services.long)


class ServiceTraffic(Collector):
    """The ``nftproxy_service_*_connections_total`` series, read at each scrape."""

    def __init__(self, read: Read, services: Callable[[], Services | None]) -> None:
        self.read = read
        self.services = services
        """The Services the last sync programmed (None before the first)."""
        self._sets = {name: _Totals() for name in SERIES}
        self._lock = threading.Lock()
        self._log = log.logger()

    def update(self) -> None:
        """Read the counters and add what they gained."""
        services = self.services()
        if services is None:
            return
        for name, totals in self._sets.items():
            seen: set[tuple[Family, bytes]] = set()
            for family in FAMILIES:
                counted = self.read(family, names.TABLE, name)
                totals.add(family, counted, services)
                seen.update((family, c.key) for c in counted)
            totals.keep(seen, services)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The series (a failed read is logged; the totals stay as they were)."""
        with self._lock:
            try:
                self.update()
            except Exception as err:  # a scrape must still answer
                self._log.warning("service counters not read", error=str(err))
            for name, (metric, text) in SERIES.items():
                family = CounterMetricFamily(metric, text, labels=LABELS)
                for labels, value in sorted(self._sets[name].totals.items()):
                    family.add_metric(labels, value)
                yield family
