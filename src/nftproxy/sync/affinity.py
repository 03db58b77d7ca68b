"""A removed endpoint takes its clients' ClientIP affinity with it.

A sticky Service port's set records ``client . endpoint id``. When a sync drops
an endpoint's rules from the sticky chain, its clients' elements match nothing
any more, but they would send those clients back to the endpoint if it returned
before the timeout (a readiness flap). kube-proxy deletes an endpoint's affinity
set with it; here, after the commit that removes the rules, the elements holding
the endpoint's id are deleted by key. No rule can record that id again once the
commit is in, so reading the set and then deleting from it races with nothing but
expiry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from nftproxy.nft.kernel import Kernel, NftError
from nftproxy.nft.model import Chain, Family, Numgen, Ruleset, SetUpdate, Table
from nftproxy.nft.transaction import Batch, DeleteElements, Transaction
from nftproxy.ruleset import names
from nftproxy.sync.apply import SyncResult, changed_chains, desired_tables

Forgotten = dict[Family, dict[str, set[str]]]
"""Per family, per affinity set: the endpoint ids (as nft prints them) to forget."""


def recorded(chains: Iterable[Chain]) -> dict[str, set[str]]:
    """Per affinity set, the endpoint ids the chains' rules record."""
    out: dict[str, set[str]] = defaultdict(set)
    for chain in chains:
        for rule in chain.rules:
            for term in rule.terms:
                if isinstance(term, SetUpdate) and isinstance(term.key[-1], Numgen):
                    out[term.set].add(str(term.key[-1].offset))
    return out


def forgotten(
    before: Mapping[Family, Table | None],
    after: Mapping[Family, Table | None],
    changed: set[str] | None,
) -> Forgotten:
    """The endpoint ids whose rules a sync removed from sets it kept.

    ``changed`` names the chains the sync changed (None: all of them); ``before``
    holds at least those. Ids still recorded by any chain after the sync stay."""
    out: Forgotten = {}
    for family, table in after.items():
        old = before.get(family)
        if table is None or old is None:
            continue
        was = recorded(c for c in old.chains if changed is None or c.name in changed)
        now = recorded(table.chains)
        kept = {s.name for s in table.sets}
        gone = {name: ids - now.get(name, set()) for name, ids in was.items() if name in kept}
        if any(gone.values()):
            out[family] = {name: ids for name, ids in gone.items() if ids}
    return out


def forget_removed(kernel: Kernel, result: SyncResult, ruleset: Ruleset) -> int:
    """After a sync: forget the clients of the sticky endpoints it removed; how
    many were forgotten. Raises NftError or OSError (callers log and go on: the
    elements then expire by the Service's timeout)."""
    ids = forgotten(result.previous, desired_tables(ruleset), changed_chains(result))
    return forget(kernel, names.TABLE, ids) if ids else 0


def forget(kernel: Kernel, table: str, ids: Forgotten) -> int:
    """Delete the clients recorded with forgotten endpoints; how many were deleted.
    An element that expires between the read and the delete fails the batch: it
    is read and tried once more."""
    try:
        return _forget_once(kernel, table, ids)
    except NftError:
        return _forget_once(kernel, table, ids)


def _forget_once(kernel: Kernel, table: str, ids: Forgotten) -> int:
    txs = []
    for family, sets in ids.items():
        for name, gone in sets.items():
            s = kernel.read_set(family, table, name)
            doomed = () if s is None else tuple(e for e in s.elements if e.key[-1] in gone)
            if s is not None and doomed:
                txs.append(Transaction(family, table, (DeleteElements(s, doomed),)))
    if txs:
        kernel.apply(Batch(table, tuple(txs)))
    return sum(len(c.elements) for tx in txs for c in tx.changes if isinstance(c, DeleteElements))
