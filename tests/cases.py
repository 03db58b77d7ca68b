"""The packet-flow cases every kernel test of the semantics runs: upstream
kube-proxy's (tests/conformance/, copied verbatim from the shared set), nftproxy's
own (tests/scenarios/) and the demo's built-in example."""

from __future__ import annotations

import pytest
from conftest import HERE

from nftproxy.lab.demo import builtin_scenario
from nftproxy.lab.scenario import load_scenario

FILES = [
    *sorted((HERE / "conformance").glob("*.yaml")),
    *sorted((HERE / "scenarios").glob("*.yaml")),
    builtin_scenario(),  # what `nftproxy demo` shows must hold too
]
CASES = [
    pytest.param(path, i, id=f"{path.parent.name}/{path.stem}[{i}]:{case.name}")
    for path in FILES
    for i, case in enumerate(load_scenario(path).cases)
]
