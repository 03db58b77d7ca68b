"""The checkpoint's codec: every table the builder makes, and every index of one
``run`` keeps, comes back from the file exactly; and nothing comes back from a file
that is not the one its stamp names, or that holds an element of another shape."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from apiobjects import clusters
from helpers import NODE
from hypothesis import HealthCheck, given, settings

from nftproxy.controller.loop import kept_index, kept_of
from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.proxy.state import ProxyState, compute_state
from nftproxy.ruleset.applied import FamilyIndex
from nftproxy.ruleset.build import build
from nftproxy.sync import checkpoint
from nftproxy.sync.apply import desired_tables
from nftproxy.sync.checkpoint import Kept

SETTINGS: Any = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "max_examples": 60,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def state_of(docs: list[dict[str, Any]]) -> ProxyState:
    loaded = Loaded()
    load_objects(iter(docs), "generated", loaded)
    return compute_state(loaded.objects, dataclasses.replace(NODE, zone="zone-a"))


def kept_and_index(state: ProxyState) -> tuple[Kept, dict[Any, FamilyIndex]]:
    index = {fs.node.family: FamilyIndex.of(fs) for fs in state.families}
    fingerprints = {("Service", "ns", "web"): "7,web-1=8"}
    return kept_of(index, checkpoint.key_of(repr(NODE)), fingerprints), index


@settings(**SETTINGS)
@given(docs=clusters())
def test_tables_come_back_whole(tmp_path: Path, docs: list[dict[str, Any]]) -> None:
    tables = desired_tables(build(state_of(docs)))
    encoded = checkpoint.encode(tables)
    path = tmp_path / "checkpoint"
    checkpoint.save(path, encoded)
    assert checkpoint.load(path, encoded.stamp) == tables


@settings(**SETTINGS)
@given(docs=clusters())
def test_what_run_keeps_comes_back_as_the_same_index(
    tmp_path: Path, docs: list[dict[str, Any]]
) -> None:
    kept, index = kept_and_index(state_of(docs))
    encoded = checkpoint.encode_kept(kept)
    path = tmp_path / "checkpoint"
    checkpoint.save(path, encoded)
    loaded = checkpoint.load(path, encoded.stamp)
    assert loaded == kept
    assert isinstance(loaded, Kept)
    again = kept_index(loaded)
    for family, idx in index.items():
        assert again[family].table() == idx.table()
        assert again[family].answering == idx.answering
        assert again[family].element_count() == idx.element_count()
        assert again[family].chains == idx.chains and again[family].sets == idx.sets


def test_only_the_file_the_stamp_names_is_read(tmp_path: Path) -> None:
    from webcase import EPS, ruleset, web  # noqa: PLC0415

    tables = desired_tables(ruleset(*web(EPS[0], EPS[1])))
    encoded = checkpoint.encode(tables)
    path = tmp_path / "checkpoint"
    checkpoint.save(path, encoded)
    assert checkpoint.load(path, encoded.stamp) == tables
    assert checkpoint.load(path, "gen:" + encoded.stamp[7:]) is None  # a sync's random stamp
    assert checkpoint.load(tmp_path / "none", encoded.stamp) is None
    # An element row of another shape than its set, in a file stamped as it is: the
    # stamp vouches for who wrote it, the reader still refuses what it cannot be.
    bad = encoded.data.replace(b"10.1.0.1\\u001f80", b"10.1.0.1", 1)
    assert bad != encoded.data
    path.write_bytes(bad)
    assert checkpoint.load(path, checkpoint.stamp_of(bad)) is None


def test_the_key_names_the_node_settings(tmp_path: Path) -> None:
    other = dataclasses.replace(NODE, masquerade_all=True)
    assert checkpoint.key_of(repr(NODE)) == checkpoint.key_of(repr(NODE))
    assert checkpoint.key_of(repr(NODE)) != checkpoint.key_of(repr(other))


def test_the_build_is_its_sources_and_its_compiled_libraries(tmp_path: Path) -> None:
    """A source edited, a compiled module (or mypyc's shared library) rebuilt: another
    build, whose checkpoint is not taken as built by this one."""
    (tmp_path / "a.py").write_text("x = 1\n")
    compiled = tmp_path / "b.cpython-311-x86_64-linux-gnu.so"
    compiled.write_bytes(b"\x7fELF one")
    shared = tmp_path.parent / f"{tmp_path.name}-abc__mypyc.so"
    shared.write_bytes(b"\x7fELF code")
    first = checkpoint.build_of(tmp_path, [shared])
    assert checkpoint.build_of(tmp_path, [shared]) == first
    compiled.write_bytes(b"\x7fELF other")
    second = checkpoint.build_of(tmp_path, [shared])
    shared.write_bytes(b"\x7fELF more code")
    third = checkpoint.build_of(tmp_path, [shared])
    (tmp_path / "a.py").write_text("x = 2\n")
    assert len({first, second, third, checkpoint.build_of(tmp_path, [shared])}) == 4
