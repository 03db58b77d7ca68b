"""``explain`` gives, for every packet case the project sends through the kernel
(upstream's conformance cases and nftproxy's own scenarios), the outcome the kernel
gives: the verdict, the set of endpoints, and whether it is masqueraded. The
kernel tests (test_conformance.py) hold the kernel to the same expectations, so a
case where explain differs is a bug in one of them."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from cases import CASES, FILES
from helpers import NODE_FLAGS, endpoint, host_port_pod, service, slice_

from nftproxy.cli.main import main
from nftproxy.diagnose.explain import DNAT, Explainer, Outcome, summary
from nftproxy.lab.netns import Lab
from nftproxy.lab.probe import Reached, connect
from nftproxy.lab.scenario import Case, Scenario, load_scenario, split_endpoint
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Family
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build
from nftproxy.sync.apply import replace

VERDICTS = {"REJECT": "reject", "DROP": "drop", "PASS": "accept"}


def explain_case(scenario: Scenario, case: Case) -> list[Outcome]:
    version = ipaddress.ip_address(case.dst).version
    ips = [ip for ip in scenario.node.ips if ip.version == version]
    src = {"node": str(ips[0]), "localhost": "127.0.0.1" if version == 4 else "::1"}.get(
        case.src, case.src
    )
    # The lab puts an LB IP that is also a case's source on the node.
    local = {str(ip) for ip in scenario.node.ips} | {
        c.src for c in scenario.cases if c.src == c.dst
    }
    ruleset = build(compute_state(scenario.objects.objects, scenario.node))
    family = Family.IP if version == 4 else Family.IP6
    table = next(t for t in ruleset.tables if t.family == family)
    iif = (
        ""
        if case.src in ("node", "localhost")
        else scenario.veth_prefix(ipaddress.ip_address(src)) + "0"
    )
    return Explainer(table, frozenset(local)).explain(src, case.dst, case.port, case.proto, iif)


@pytest.mark.parametrize(("path", "index"), CASES)
def test_explain_agrees_with_the_kernel(path: Path, index: int) -> None:
    scenario = load_scenario(path)
    case = scenario.cases[index]
    outcomes = explain_case(scenario, case)
    verdicts = {o.verdict for o in outcomes}
    if isinstance(case.expect, str):
        assert verdicts == {VERDICTS[case.expect]}, summary(outcomes)
        return
    assert verdicts == {DNAT}, summary(outcomes)
    reached = {(o.packet.dst, o.packet.port) for o in outcomes}
    assert reached == {split_endpoint(e) for e in case.expect}, summary(outcomes)
    assert {o.packet.masquerade for o in outcomes} == {case.masq}, summary(outcomes)
    assert sum(o.probability for o in outcomes) == 1


def _comparable(outcomes: list[Outcome]) -> list[tuple[object, ...]]:
    return [
        (o.probability, o.verdict, o.packet.dst, o.packet.port, o.packet.masquerade)
        for o in outcomes
    ]


@pytest.mark.kernel
def test_explain_of_the_kernel_agrees_with_explain_of_the_manifests() -> None:
    """Each scenario applied, read back over netlink, explained again: the same answers."""

    files: list[Path] = FILES
    with Lab("explain") as lab:
        kernel = Libnftables(lab.node)
        for path in files:
            scenario = load_scenario(path)
            ruleset = build(compute_state(scenario.objects.objects, scenario.node))
            replace(kernel, ruleset)
            local = frozenset({str(ip) for ip in scenario.node.ips})
            for case in scenario.cases:
                version = ipaddress.ip_address(case.dst).version
                family = Family.IP if version == 4 else Family.IP6
                read = kernel.read_table(family, "nftproxy")
                built = next(t for t in ruleset.tables if t.family == family)
                assert read is not None
                src = str(next(ip for ip in scenario.node.ips if ip.version == version))
                src = src if case.src in ("node", "localhost") else case.src
                args = (src, case.dst, case.port, case.proto)
                assert _comparable(Explainer(read, local).explain(*args)) == _comparable(
                    Explainer(built, local).explain(*args)
                ), (path.name, case.name)


@pytest.mark.kernel
def test_the_command_explains_the_kernel_and_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    manifest = tmp_path / "m.yaml"
    pod = host_port_pod("svc", pod_ip="10.1.0.1")
    docs = [service(), slice_("svc", endpoint("10.1.0.1"), endpoint("10.1.0.2")), pod]
    manifest.write_text("\n---\n".join(json.dumps(d) for d in docs))
    conn = ["--from", "10.0.0.5", "--to", "172.30.0.10", "--port", "80", "--json"]
    assert main(["explain", "-f", str(manifest), *NODE_FLAGS, *conn]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert from_files["verdict"] == "dnat" and from_files["service"] == "ns/svc/tcp/p"
    assert [e["probability"] for e in from_files["endpoints"]] == [0.5, 0.5]
    assert from_files["counters"] is None  # manifests count nothing
    with Lab("explaincli") as lab:
        client = lab.add_host(ipaddress.ip_address("10.0.0.5"))
        for ip in ("10.1.0.1", "10.1.0.2"):
            lab.add_host(ipaddress.ip_address(ip))
        lab.start_responders([8080])
        assert (
            main(
                ["apply", "-f", str(manifest), *NODE_FLAGS, "--netns", lab.node, "--checkpoint", ""]
            )
            == 0
        )
        for _ in range(3):
            assert isinstance(connect(client, "172.30.0.10", 80, "tcp", timeout=2), Reached)
        capsys.readouterr()
        assert main(["explain", "--kernel", "--netns", lab.node, *NODE_FLAGS, *conn]) == 0
        counted = {"new": 3, "rejected": 0}
        assert json.loads(capsys.readouterr().out) == {**from_files, "counters": counted}
        assert main(["explain", "--kernel", "--netns", lab.node, *NODE_FLAGS, *conn[:-1]]) == 0
        assert "ns/svc/tcp/p (ip, every entry): 3 new connections, 0 refused" in (
            capsys.readouterr().out
        )
        # A Pod's hostPort (the Pod named as the Service): served, not counted.
        to_pod = ["--from", "10.0.0.5", "--to", "192.168.0.2", "--port", "8080", "--json"]
        assert main(["explain", "--kernel", "--netns", lab.node, *NODE_FLAGS, *to_pod]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert (answer["service"], answer["counters"]) == ("ns/svc/tcp/hostport-8080", None)
        assert (
            main(
                [
                    "explain",
                    "--kernel",
                    "--netns",
                    lab.node,
                    *NODE_FLAGS,
                    "--from",
                    "10.0.0.5",
                    "--to",
                    "172.30.0.10",
                    "--port",
                    "81",
                ]
            )
            == 0
        )
        assert "REJECT" in capsys.readouterr().out
    assert main(["explain", *NODE_FLAGS, *conn]) == 2  # neither -f nor --kernel
    bad = ["--from", "10.0.0.500", "--to", "172.30.0.10", "--port", "80"]
    assert main(["explain", "-f", str(manifest), *NODE_FLAGS, *bad]) == 2
    assert "10.0.0.500" in capsys.readouterr().err
