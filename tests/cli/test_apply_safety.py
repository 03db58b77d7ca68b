"""``apply`` never removes what it could not read: invalid input keeps the kernel's
rules of its Service; input that is not Kubernetes objects applies nothing."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NODE, NODE_FLAGS, endpoint, service, slice_
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftproxy.cli.main import main
from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab
from nftproxy.lab.probe import Reached, connect
from nftproxy.nft.kernel import Libnftables
from nftproxy.nft.model import Family, Table
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build, fixed_table
from nftproxy.ruleset.keep import comment_names, keep_owners
from nftproxy.sync.apply import desired_tables, plan_all, read_tables

EXAMPLE = Path(__file__).parents[2] / "src" / "nftproxy" / "lab" / "examples" / "demo.yaml"
CLIENT = "10.0.0.2"


def web(*eps: str, node_port: int = 30080) -> list[dict[str, Any]]:
    return [
        service(
            "web",
            type="NodePort",
            clusterIP="172.30.0.10",
            ports=[{"name": "p", "port": 80, "protocol": "TCP", "nodePort": node_port}],
        ),
        slice_("web", *[endpoint(e) for e in eps], ports=[{"name": "p", "port": 80}]),
    ]


def db(*eps: str, **spec: Any) -> list[dict[str, Any]]:
    spec.setdefault("clusterIP", "172.30.0.20")
    spec.setdefault("ports", [{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30081}])
    spec.setdefault("type", "NodePort")
    return [
        service("db", **spec),
        slice_("db", *[endpoint(e) for e in eps], ports=[{"name": "p", "port": 80}]),
    ]


def tables(docs: list[dict[str, Any]]) -> dict[Family, Table | None]:
    loaded = Loaded()
    load_objects(iter(docs), "test", loaded)
    return desired_tables(build(compute_state(loaded.objects, NODE)))


def owner_part(t: Table | None, owner: tuple[str, str]) -> list[tuple[str, tuple[str, ...]]]:
    """The entry elements of owner in t, as (set, key)."""
    if t is None:
        return []
    return sorted(
        (s.name, e.key) for s in t.sets for e in s.elements if comment_names(e.comment, owner)
    )


# -- the planning, without a kernel -------------------------------------------------


MODES = ("same", "changed", "invalid-service", "invalid-slice", "deleted")


def _service_docs(i: int, eps: list[str], sticky: bool, slices: int) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {
        "type": "NodePort",
        "clusterIP": f"172.30.1.{i + 1}",
        "ports": [{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 30100 + i}],
    }
    if sticky:
        spec["sessionAffinity"] = "ClientIP"
    docs = [service(f"s{i}", **spec)]
    for k in range(slices):
        mine = eps[k::slices]
        docs.append(
            slice_(
                f"s{i}",
                *[endpoint(e, node="node-a" if j == 0 else "other") for j, e in enumerate(mine)],
                name=f"s{i}-{k}",
                ports=[{"name": "p", "port": 8080}],
            )
        )
    return docs


@st.composite
def before_and_after(draw: st.DrawFn) -> tuple[list[Any], list[Any], list[Any], set[Any]]:
    """Services before, the manifests after (some changed, some made invalid), the
    objects an oracle builds from (invalid ones at their version before), and the
    invalid owners."""
    before: list[Any] = []
    after: list[Any] = []
    oracle: list[Any] = []
    invalid: set[tuple[str, str]] = set()
    for i in range(draw(st.integers(1, 4))):
        sticky = draw(st.booleans())
        slices = draw(st.integers(1, 3))
        n = draw(st.integers(1, 4))
        old = _service_docs(i, [f"10.1.{i}.{j + 1}" for j in range(n)], sticky, slices)
        m = draw(st.integers(1, 4))
        new = _service_docs(i, [f"10.1.{i}.{j + 10}" for j in range(m)], sticky, slices)
        mode = draw(st.sampled_from(MODES))
        before += old
        if mode == "same":
            after += old
            oracle += old
        elif mode == "changed":
            after += new
            oracle += new
        elif mode == "deleted":
            pass
        else:
            broken = json.loads(json.dumps(new))
            if mode == "invalid-service":
                broken[0]["spec"]["ports"][0]["port"] = 99999
            else:
                broken[-1]["addressType"] = "Bogus"
            after += broken
            oracle += old
            invalid.add(("ns", f"s{i}"))
    return before, after, oracle, invalid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before_and_after())
def test_kept_owners_are_as_before_and_the_rest_as_asked(
    case: tuple[list[Any], list[Any], list[Any], set[Any]],
) -> None:
    """Planned over the tables of ``before``: every valid Service as a full build of the
    valid objects makes it, every invalid one as it was."""
    before, after, oracle, invalid = case
    loaded = Loaded()
    load_objects(iter(after), "test", loaded)
    assert set(loaded.invalid) == invalid
    state = compute_state(loaded.objects, NODE)
    empty = {fs.node.family: fixed_table(fs.node) for fs in state.families}
    kept, _ = keep_owners(desired_tables(build(state)), tables(before), invalid, empty)
    assert plan_all(kept, tables(oracle)) == ()


def test_an_owner_the_kernel_lacks_stays_absent() -> None:
    """A Service new in the manifests but invalid is not added (the kernel holds
    nothing of it)."""
    state = compute_state([], NODE)
    empty = {fs.node.family: fixed_table(fs.node) for fs in state.families}
    wanted = tables(web("10.1.0.1"))
    kept, what = keep_owners(wanted, tables([]), {("ns", "web")}, empty)
    assert owner_part(kept[Family.IP], ("ns", "web")) == []
    assert what.entries == {}


def test_shortened_comments_match_by_prefix() -> None:
    ns, name = "n" * 63, "s" * 63
    docs = [
        service(name, ns=ns, clusterIP="172.30.0.10"),
        slice_(name, endpoint("10.1.0.1"), ns=ns, ports=[{"name": "p", "port": 80}]),
    ]
    held = tables(docs)[Family.IP]
    assert held is not None
    assert owner_part(held, (ns, name))
    assert not owner_part(held, (ns, "other"))


# -- through the kernel ---------------------------------------------------------------


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("keep") as lab:
        lab.add_node_ip(ipaddress.ip_address("192.168.0.2"))
        for addr in (CLIENT, "10.1.0.1", "10.1.0.2", "10.1.0.3"):
            lab.add_host(ipaddress.ip_address(addr))
        lab.start_responders([80])
        yield lab


def _apply(
    lab: Lab, tmp_path: Path, docs: list[dict[str, Any]] | str, *flags: str
) -> tuple[int, str, str]:
    path = tmp_path / "m.yaml"
    path.write_text(
        docs
        if isinstance(docs, str)
        else json.dumps({"kind": "List", "apiVersion": "v1", "items": docs})
    )
    return _main(
        ["apply", "-f", str(path), *NODE_FLAGS, "--netns", lab.node, "--checkpoint", "", *flags]
    )


def _main(argv: list[str]) -> tuple[int, str, str]:
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _kernel(lab: Lab) -> dict[Family, Table | None]:
    return read_tables(Libnftables(lab.node))


def _reaches(lab: Lab, dst: str) -> set[str]:
    host = lab.hosts[ipaddress.ip_address(CLIENT)]
    got = [connect(host, dst, 80, "tcp", src=CLIENT) for _ in range(40)]
    return {g.local if isinstance(g, Reached) else str(g) for g in got}


@pytest.mark.kernel
def test_an_invalid_service_keeps_its_rules_and_another_change_lands(
    lab: Lab, tmp_path: Path
) -> None:
    assert _apply(lab, tmp_path, [*web("10.1.0.1"), *db("10.1.0.2")])[0] == 0
    held = _kernel(lab)[Family.IP]
    bad = db("10.1.0.2", ports=[{"name": "p", "port": 80, "protocol": "TCP", "nodePort": 99999}])
    code, out, err = _apply(lab, tmp_path, [*web("10.1.0.1", "10.1.0.3"), *bad])
    assert code == 1, err
    assert "kept at their previous state (invalid input): ns/db" in out
    assert "nodePort" in err
    now = _kernel(lab)[Family.IP]
    assert owner_part(now, ("ns", "db")) == owner_part(held, ("ns", "db"))
    assert _reaches(lab, "172.30.0.20") == {"10.1.0.2"}
    assert _reaches(lab, "172.30.0.10") == {"10.1.0.1", "10.1.0.3"}  # the valid change landed
    # diff: the kept Service is a problem on stderr, not rules to remove
    path = tmp_path / "m.yaml"
    code, out, err = _main(["diff", "-f", str(path), *NODE_FLAGS, "--netns", lab.node])
    assert (code, out) == (0, "in sync\n") and "nodePort" in err
    # --prune-invalid removes it on purpose
    code, out, _ = _apply(lab, tmp_path, [*web("10.1.0.1", "10.1.0.3"), *bad], "--prune-invalid")
    assert code == 1 and "kept" not in out
    assert owner_part(_kernel(lab)[Family.IP], ("ns", "db")) == []


@pytest.mark.kernel
def test_one_invalid_slice_of_three_keeps_the_services_endpoints(lab: Lab, tmp_path: Path) -> None:
    ports = [{"name": "p", "port": 80}]
    slices = [
        slice_("web", endpoint(ep), name=f"web-{i}", ports=ports)
        for i, ep in enumerate(("10.1.0.1", "10.1.0.2", "10.1.0.3"))
    ]
    svc = web()[0]
    assert _apply(lab, tmp_path, [svc, *slices])[0] == 0
    assert _reaches(lab, "172.30.0.10") == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    slices[1]["endpoints"][0]["addresses"] = ["not-an-ip"]
    code, out, _ = _apply(lab, tmp_path, [svc, slices[0], slices[1]], "--json")
    assert code == 1
    report = json.loads(out)
    assert [k["owner"] for k in report["kept"]] == ["ns/web"]
    assert (
        "not-an-ip" in report["kept"][0]["because"][0]
        or "addresses" in report["kept"][0]["because"][0]
    )
    assert _reaches(lab, "172.30.0.10") == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}


NOT_OBJECTS = {
    "values": "replicaCount: 2\nimage: {repository: nftproxy}\n",
    "scenario": EXAMPLE.read_text(),
}


@pytest.mark.kernel
@pytest.mark.parametrize("input_", sorted(NOT_OBJECTS))
def test_input_that_is_not_kubernetes_objects_applies_nothing(
    lab: Lab, tmp_path: Path, input_: str
) -> None:
    assert _apply(lab, tmp_path, [*web("10.1.0.1"), *db("10.1.0.2")])[0] == 0
    held = _kernel(lab)
    code, out, err = _apply(lab, tmp_path, NOT_OBJECTS[input_])
    assert code == 2 and out == ""
    assert f"{tmp_path / 'm.yaml'}: document 0" in err
    assert plan_all(_kernel(lab), held) == ()
    code, out, _ = _main(["render", "-f", str(tmp_path / "m.yaml"), *NODE_FLAGS])
    assert (code, out) == (2, "")


@pytest.mark.kernel
def test_an_empty_state_over_services_needs_consent(lab: Lab, tmp_path: Path) -> None:
    assert _apply(lab, tmp_path, web("10.1.0.1"))[0] == 0
    held = _kernel(lab)
    configmap = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]
    for docs in ([], configmap):
        code, _, err = _apply(lab, tmp_path, docs)
        assert code == 2 and "--allow-empty" in err
        assert plan_all(_kernel(lab), held) == ()
    code, out, _ = _apply(lab, tmp_path, [], "--allow-empty")
    assert code == 0 and "removed" in out
    assert owner_part(_kernel(lab)[Family.IP], ("ns", "web")) == []
    assert _apply(lab, tmp_path, [])[0] == 0  # nothing to lose: no consent needed


@pytest.mark.kernel
def test_an_invalid_object_of_an_unknown_owner_applies_nothing(lab: Lab, tmp_path: Path) -> None:
    assert _apply(lab, tmp_path, web("10.1.0.1"))[0] == 0
    held = _kernel(lab)
    nameless = service("x")
    del nameless["metadata"]["name"]
    code, _, err = _apply(lab, tmp_path, [nameless])
    assert code == 2 and "--prune-invalid" in err
    assert plan_all(_kernel(lab), held) == ()


@pytest.mark.kernel
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(before_and_after())
def test_after_apply_valid_services_are_as_asked_and_invalid_ones_as_before(
    lab: Lab, tmp_path: Path, case: tuple[list[Any], list[Any], list[Any], set[Any]]
) -> None:
    """The property above, through ``apply`` and the kernel: what the kernel holds
    after applying the manifests is a full build of the oracle's objects."""
    before, after, oracle, invalid = case
    _main(["cleanup", "--netns", lab.node])
    assert _apply(lab, tmp_path, before)[0] == 0
    code, _, err = _apply(lab, tmp_path, after, "--allow-empty")
    assert code == (1 if invalid else 0), err
    assert plan_all(tables(oracle), _kernel(lab)) == ()
