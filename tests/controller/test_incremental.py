"""Property: whatever sequence of changes the watches deliver, the loop's syncs (most
of them planned for the changed Services alone) leave the kernel holding exactly
what a fresh full sync of the final objects would program."""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Iterator
from typing import Any

import pytest
from apiobjects import clusters, pods, services, slices_for
from helpers import NODE, endpoint, service, slice_
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftproxy.controller.loop import FULL_CHECK_EVERY, Loop, Timing
from nftproxy.controller.serve.health import ProxyHealth
from nftproxy.controller.serve.metrics import Metrics
from nftproxy.k8s.cache import Cache
from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.nft.fake import MemoryKernel
from nftproxy.nft.kernel import Kernel, Libnftables, NftError
from nftproxy.nft.model import Family, Ruleset, Table
from nftproxy.nft.transaction import Batch, DeleteSet
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build
from nftproxy.sync.apply import drift, read_tables
from nftproxy.sync.plan import plan

Doc = dict[str, Any]
EXPLORE = bool(os.environ.get("NFTPROXY_HYPOTHESIS_RANDOM"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("incr") as made:
        yield made


@pytest.fixture(scope="module")
def kernel(lab: Lab) -> Libnftables:
    return Libnftables(lab.node)


@pytest.fixture(scope="module")
def both(lab: Lab) -> Both:
    return Both(lab.node)


def new_loop(kernel: Kernel) -> Loop:
    metrics = Metrics()
    cache = Cache(NODE.name)
    loop = Loop(
        kernel,
        cache,
        NODE,
        timing=Timing(min_sync=0),
        metrics=metrics,
        health=ProxyHealth(60, metrics),
        out=io.StringIO(),
    )
    return loop


def full_ruleset(docs: list[Doc]) -> Ruleset:
    loaded = Loaded()
    load_objects(iter(docs), "generated", loaded)
    return build(compute_state(loaded.objects, NODE))


def deliver(cache: Cache, docs: list[Doc]) -> None:
    """What a relist of every kind delivers."""
    for kind in ("Service", "EndpointSlice", "Pod"):
        cache.replace(kind, [copy.deepcopy(d) for d in docs if d["kind"] == kind])


def _key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


@st.composite
def histories(draw: st.DrawFn) -> list[list[Doc]]:
    """A cluster, then 1 to 5 steps that each change, add or delete some objects:
    a Service respecified under its name, its slices redrawn or gone, Services
    added and deleted, hostPort Pods coming and going."""
    docs = unique(draw(clusters()))
    out = [docs]
    for _ in range(draw(st.integers(1, 5))):
        docs = list(docs)
        svcs = [d for d in docs if d["kind"] == "Service"]
        picked = draw(st.lists(st.sampled_from(svcs), max_size=3, unique_by=id)) if svcs else []
        for old in picked:
            action = draw(st.sampled_from(["respec", "slices", "delete", "no slices"]))
            ns, name = old["metadata"]["namespace"], old["metadata"]["name"]
            owned = [
                d
                for d in docs
                if d["kind"] == "EndpointSlice"
                and d["metadata"]["namespace"] == ns
                and d["metadata"]["labels"]["kubernetes.io/service-name"] == name
            ]
            docs = [d for d in docs if d is not old and not any(d is o for o in owned)]
            if action == "delete":
                continue
            svc = old
            if action == "respec":
                svc = {**draw(services()), "metadata": old["metadata"]}
            docs.append(svc)
            if action in {"slices", "respec"}:
                docs += draw(slices_for(svc))
        if draw(st.booleans()):
            for svc in draw(st.lists(services(), max_size=2)):
                docs += [svc, *draw(slices_for(svc))]
        if draw(st.booleans()):
            docs = [d for d in docs if d["kind"] != "Pod"] + draw(st.lists(pods(), max_size=2))
        docs = unique(docs)
        out.append(docs)
    return out


def unique(docs: list[Doc]) -> list[Doc]:
    """One object per kind, namespace and name (generated names may collide; the
    API server would hold the last)."""
    return list({_key(d): d for d in docs}.values())


class Both(Libnftables):
    """The real kernel, with every batch also applied to a memory kernel first: the
    two must agree on what they accept and on what they then hold."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.memory = MemoryKernel()

    def apply(self, batch: Batch) -> None:
        try:
            self.memory.apply(batch)
        except NftError:
            with pytest.raises(NftError):
                super().apply(batch)
            raise
        super().apply(batch)


def replay(kernel: Kernel, history: list[list[Doc]]) -> Loop:
    """The loop syncs each step of history; after each, the kernel holds what a
    fresh full sync of that step would program, and so does the loop's memory."""
    loop = new_loop(kernel)
    loop.need_read = True  # the kernel may hold a previous example's tables
    for docs in history:
        deliver(loop.cache, docs)
        assert loop.sync_once()
        want = full_ruleset(docs)
        assert not drift(want, read_tables(kernel)), "kernel differs from a full sync"
        assert loop.applied is not None
        assert not drift(want, loop.applied), "what the loop remembers differs"
    return loop


@settings(
    max_examples=200 if EXPLORE else 40,
    deadline=None,
    database=None,
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.kernel
@given(history=histories())
def test_the_kernel_always_holds_what_a_full_sync_would(
    both: Both, history: list[list[Doc]]
) -> None:
    replay(both, history)
    for family in (Family.IP, Family.IP6):  # the memory kernel holds what the real one does
        real = both.read_table(family, "nftproxy")
        mem = both.memory.read_table(family, "nftproxy")
        assert not plan(real, mem, family, "nftproxy") and not plan(mem, real, family, "nftproxy")


@settings(
    max_examples=2000 if EXPLORE else 400,
    deadline=None,
    database=None,
    derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(history=histories())
def test_the_memory_kernel_always_holds_what_a_full_sync_would(history: list[list[Doc]]) -> None:
    """The same property over many more sequences, against the memory kernel."""
    replay(MemoryKernel(), history)


@pytest.mark.kernel
def test_one_endpoint_change_is_planned_alone(kernel: Libnftables) -> None:
    """A slice change on a loaded node touches only that Service's elements."""
    loop = new_loop(kernel)
    loop.need_read = True
    docs: list[Doc] = []
    for i in range(20):
        docs += [
            service(f"s{i}", clusterIP=f"172.30.1.{i}"),
            slice_(f"s{i}", endpoint(f"10.1.{i}.1"), endpoint(f"10.1.{i}.2")),
        ]
    deliver(loop.cache, docs)
    assert loop.sync_once()
    docs[1] = slice_("s0", endpoint("10.1.0.1"), endpoint("10.1.0.3"))
    deliver(loop.cache, docs)
    assert loop.sync_once()
    result = loop.last_result
    assert result is not None and loop.last_partial
    script = result.script
    assert "10.1.0.3" in script and "10.1.0.2" in script  # in and out
    assert "10.1.1." not in script and "172.30.1.1 " not in script
    assert not any(isinstance(c, DeleteSet) for tx in result.transactions for c in tx.changes)
    assert not drift(full_ruleset(docs), read_tables(kernel))


@pytest.mark.kernel
def test_a_clash_goes_the_full_way_and_back(kernel: Libnftables) -> None:
    """Two Services on one address and port: the full path decides who wins, as
    for manifests; once the clash ends, syncs are partial again."""
    loop = new_loop(kernel)
    loop.need_read = True
    a = [service("a", clusterIP="172.30.2.1"), slice_("a", endpoint("10.2.0.1"))]
    b = [service("b", clusterIP="172.30.2.2"), slice_("b", endpoint("10.2.0.2"))]
    deliver(loop.cache, a + b)
    assert loop.sync_once()
    b[0] = service("b", clusterIP="172.30.2.2", externalIPs=["172.30.2.1"])
    deliver(loop.cache, a + b)
    assert loop.sync_once() and loop.clashes
    assert not drift(full_ruleset(a + b), read_tables(kernel))
    b[0] = service("b", clusterIP="172.30.2.2")
    deliver(loop.cache, a + b)
    assert loop.sync_once() and not loop.clashes
    b[1] = slice_("b", endpoint("10.2.0.3"))
    deliver(loop.cache, a + b)
    assert loop.sync_once()
    assert loop.last_partial
    assert not drift(full_ruleset(a + b), read_tables(kernel))


class CountingReads(Libnftables):
    """The real kernel, counting table reads."""

    reads = 0

    def read_table(self, family: Any, name: str, *, elements: bool = True) -> Any:
        self.reads += 1
        return super().read_table(family, name, elements=elements)


@pytest.mark.kernel
def test_the_drift_check_reads_the_kernel_only_after_a_foreign_change() -> None:
    with Lab("gen") as lab:
        kernel = CountingReads(lab.node)
        loop = new_loop(kernel)
        deliver(loop.cache, [service("a"), slice_("a", endpoint("10.3.0.1"))])
        assert loop.sync_once()
        kernel.reads = 0
        assert loop.check_drift() == 0 and kernel.reads == 0  # nothing committed since
        in_ns(lab.node, "nft", "add", "table", "inet", "somebody-else")
        assert loop.check_drift() == 0 and kernel.reads > 0  # read: ours is intact
        kernel.reads = 0
        assert loop.check_drift() == 0 and kernel.reads == 0
        in_ns(lab.node, "nft", "flush", "map", "ip", "nftproxy", "service-ips")
        assert loop.check_drift() > 0
        assert loop.sync_once()  # the repair
        kernel.reads = 0
        for _ in range(FULL_CHECK_EVERY):
            assert loop.check_drift() == 0
        assert kernel.reads > 0  # every tenth check reads regardless


class ReadCounting(MemoryKernel):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_table(self, family: Family, name: str, *, elements: bool = True) -> Table | None:
        self.reads += 1
        return super().read_table(family, name, elements=elements)


def test_the_first_sync_plans_against_the_read_ahead_unless_the_kernel_moved() -> None:
    """The kernel read while the lists arrive serves the first sync; when a commit
    came in between (here: our table deleted by somebody), the sync reads again
    instead of planning a difference against tables that are gone."""
    docs = [service("a"), slice_("a", endpoint("10.3.0.1"))]
    for moved in (False, True):
        kernel = ReadCounting()
        first = new_loop(kernel)
        deliver(first.cache, docs)
        assert first.sync_once()
        restarted = new_loop(kernel)
        restarted.read_ahead()
        assert restarted._ahead is not None
        restarted._ahead.result()  # the read is done
        read_ahead = kernel.reads
        if moved:
            kernel.held.clear()
            kernel.gen += 1
        deliver(restarted.cache, docs)
        assert restarted.sync_once()
        assert not drift(full_ruleset(docs), read_tables(kernel))
        assert kernel.reads - read_ahead == (2 if moved else 0) + 2  # + the check above
