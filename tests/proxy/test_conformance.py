"""Every upstream kube-proxy packet-flow case, through the real kernel.

The files in tests/conformance/ are copied verbatim from the shared conformance
set; tests/scenarios/ holds nftproxy's own cases in the same format.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import CASES, FILES
from conftest import ScenarioLabs

from nftproxy.lab.scenario import load_scenario


@pytest.mark.kernel
@pytest.mark.parametrize(("path", "index"), CASES)
def test_packet_flow(scenario_labs: ScenarioLabs, path: Path, index: int) -> None:
    """The connection ends where upstream kube-proxy sends it, masqueraded as upstream does."""
    runner = scenario_labs.runner_for(path)
    result = runner.run(runner.s.cases[index])
    assert result.passed, f"{result.failures}; outcomes: {result.outcomes[-3:]}"


def test_every_conformance_file_has_cases() -> None:
    """A conformance file that loads no case would silently test nothing."""
    for path in FILES:
        scenario = load_scenario(path)
        assert scenario.cases, path
        assert not [p for p in scenario.objects.problems if not p.note], path
