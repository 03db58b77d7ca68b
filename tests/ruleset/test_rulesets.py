"""Golden rulesets: what each kind of Service becomes, checked against renderer and kernel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from helpers import comparable

from nftproxy.cli.flags import settings_of
from nftproxy.cli.main import parser
from nftproxy.k8s.manifests import load_paths
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.nft.kernel import Libnftables
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build
from nftproxy.settings.node import node_config
from nftproxy.sync.apply import desired_tables, plan_all, read_tables, without_chain_comments


def _regen() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "regen_rulesets.py"
    spec = importlib.util.spec_from_file_location("regen_rulesets", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGEN = _regen()
EXAMPLES = REGEN.examples()


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("folder", EXAMPLES, ids=lambda p: p.name)
def test_golden_matches_renderer(folder: Path) -> None:
    """rulesets/<example>/ruleset.nft is what the renderer prints (regenerate with
    ``python scripts/regen_rulesets.py`` after an intended change)."""
    assert (folder / "ruleset.nft").read_text() == REGEN.render_example(folder)


@pytest.mark.kernel
def test_goldens_load_twice_and_over_each_other() -> None:
    """Each golden loads into a kernel, again over itself, and over every other one."""
    with Lab("golden") as lab:
        previous = None
        for folder in EXAMPLES:
            script = (folder / "ruleset.nft").read_text()
            lab.load(script)
            lab.load(script)
            listed = in_ns(lab.node, "nft", "list", "tables")
            assert "table ip nftproxy" in listed, folder
            if previous is not None:
                lab.load(previous)
                lab.load(script)
            previous = script


@pytest.mark.kernel
def test_goldens_read_back_equal_the_builder() -> None:
    """Each golden, loaded and read back from the kernel, plans to nothing against
    what the builder made: the parser undoes every normalisation nft applies."""
    flags = (REGEN.ROOT / "node-flags").read_text().split()
    with Lab("readback") as lab:
        kernel = Libnftables(lab.node)
        for folder in EXAMPLES:
            settings = settings_of(parser().parse_args(["render", "-f", str(folder), *flags]))
            ruleset = build(compute_state(load_paths([folder]).objects, node_config(settings)))
            lab.load((folder / "ruleset.nft").read_text())
            current = read_tables(kernel)
            assert not plan_all(desired_tables(ruleset), current), folder.name
            by_nft = read_tables(kernel, via_nft=True)
            assert {f: comparable(t) for f, t in without_chain_comments(current).items()} == {
                f: comparable(t) for f, t in by_nft.items()
            }, folder.name
