"""Shared fixtures: kernel tests need root and nft; labs never outlive a test run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nftproxy.lab.netns import LAB_FOLDER, Lab, list_lab_namespaces
from nftproxy.lab.scenario import Runner, Scenario, load_scenario

HERE = Path(__file__).parent

# tests/image runs inside the built image, only through `scripts/image.sh test`
# (which names it in NFTPROXY_IMAGE): the main run leaves it out.
collect_ignore_glob = [] if os.environ.get("NFTPROXY_IMAGE") else ["image/*"]


def kernel_available() -> bool:
    """Root, nft and ip are here: the packet tests can run."""
    return os.geteuid() == 0 and bool(shutil.which("nft")) and bool(shutil.which("ip"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if kernel_available() and not os.environ.get("NFTPROXY_SKIP_KERNEL"):
        return
    skip = pytest.mark.skip(reason="needs root, nft and ip (kernel test)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


class ScenarioLabs:
    """At most one scenario lab alive at a time: tests of one file run in a row."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.lab: Lab | None = None
        self.runner: Runner | None = None

    def runner_for(self, path: Path) -> Runner:
        if self.path != path or self.runner is None:
            self.close()
            scenario: Scenario = load_scenario(path)
            self.lab = Lab(path.stem[:12])
            self.lab.__enter__()
            self.path = path
            self.runner = Runner(scenario, self.lab)
            self.runner.setup()
        return self.runner

    def close(self) -> None:
        if self.lab is not None:
            self.lab.close()
        self.path = self.lab = self.runner = None


@pytest.fixture(scope="session")
def scenario_labs() -> Iterator[ScenarioLabs]:
    labs = ScenarioLabs()
    try:
        yield labs
    finally:
        labs.close()


def _lab_folders() -> set[Path]:
    """This process's lab folders (another test run's on the machine are its own)."""
    return set(Path(tempfile.gettempdir()).glob(f"{LAB_FOLDER}{os.getpid()}-*"))


@pytest.fixture(scope="session", autouse=True)
def no_leaked_namespaces() -> Iterator[None]:
    """Every namespace and lab folder a test made is gone at the end, also after failures."""
    before = _lab_folders()
    yield
    left = list(list_lab_namespaces())
    assert not left, f"network namespaces left behind: {left}"
    folders = sorted(map(str, _lab_folders() - before))
    assert not folders, f"lab folders left behind: {folders}"
