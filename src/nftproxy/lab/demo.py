"""``nftproxy demo``: render a scenario, load it into a throw-away lab, send its connections.

Prints, for every case, where its connections went and whether that is what
kube-proxy does. The lab's namespaces are removed at the end, also on errors.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from nftproxy.lab.netns import Lab
from nftproxy.lab.scenario import Result, Runner, load_scenario, render

BUILTIN = "demo.yaml"


def builtin_scenario() -> Path:
    """The demo scenario shipped with the package."""
    return Path(str(resources.files("nftproxy") / "lab" / "examples" / BUILTIN))


def _line(result: Result) -> str:
    c = result.case
    seen = sorted(set(result.outcomes))
    verdict = "ok  " if result.passed else "FAIL"
    src = c.src if c.src != "node" else "the node"
    head = f"{verdict} {c.name}: {src} -> {c.dst}:{c.port}/{c.proto}"
    got = ", ".join(seen[:4]) + (" ..." if len(seen) > 4 else "")
    tail = f"\n       {'; '.join(result.failures)}" if result.failures else ""
    return f"{head}\n       got {got}{tail}"


def run_demo(path: Path | None = None, *, show_ruleset: bool = False) -> int:
    """Run a scenario (the built-in one by default); 0 when every case behaves."""
    scenario = load_scenario(path or builtin_scenario())
    script = render(scenario)
    if show_ruleset:
        print(script)
    print(f"scenario: {scenario.path.name} - {scenario.description}")
    print(f"ruleset: {script.count(chr(10))} lines of nft; loading into a throw-away namespace")
    failed = 0
    with Lab("demo") as lab:
        runner = Runner(scenario, lab)
        runner.setup(script)
        print(f"lab: node {lab.node} with {len(lab.hosts)} hosts around it\n")
        for case in scenario.cases:
            result = runner.run(case)
            failed += not result.passed
            print(_line(result), flush=True)
    passed = len(scenario.cases) - failed
    print(f"\ndemo: {passed} of {len(scenario.cases)} cases went where kube-proxy sends them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_demo())
