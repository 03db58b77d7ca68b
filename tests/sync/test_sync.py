"""Kernel sync through the real kernel: apply, change, drift, no gap, conntrack, failures."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    BACKENDS,
    KUBE_PROXY_CHAIN_COUNT,
    NODE_FLAGS,
    endpoint,
    node_rules,
    service,
    slice_,
)
from webcase import CLIENT, EPS, EXTERNAL, NODE, PORTS, SLICE_PORTS, ruleset, web

from nftproxy.cli.main import main
from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.lab.probe import Reached, connect, namespace
from nftproxy.nft.kernel import Libnftables, NftError
from nftproxy.nft.model import Family, Ruleset, VerdictKind
from nftproxy.nft.stages import ElementStage, Stage
from nftproxy.nft.transaction import AddElements, Batch
from nftproxy.proxy.state import compute_state, serving_flows
from nftproxy.ruleset import names
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig
from nftproxy.sync.apply import (
    desired_tables,
    drift,
    plan_all,
    read_tables,
    replace,
    stale_plan,
    sync,
    sync_with_retries,
    without_chain_comments,
)
from nftproxy.sync.checkpoint import stamp_of
from nftproxy.sync.cleanup import cleanup
from nftproxy.sync.features import missing_features
from nftproxy.sync.report import differences


@pytest.fixture
def lab() -> Iterator[tuple[Lab, Libnftables]]:
    with Lab("sync") as lab:
        lab.add_node_ip(ipaddress.ip_address("192.168.0.2"))
        for addr in (CLIENT, EXTERNAL, *EPS):
            lab.add_host(ipaddress.ip_address(addr))
        lab.start_responders([80, 53])
        yield lab, Libnftables(lab.node)


def in_sync(kernel: Libnftables, rs: Ruleset) -> bool:
    return not plan_all(desired_tables(rs), read_tables(kernel))


def reached(
    lab: Lab, src: str, dst: str, port: int, *, proto: str = "tcp", tries: int = 30
) -> set[str]:
    out = set()
    for _ in range(tries):
        got = connect(lab.hosts[ipaddress.ip_address(src)], dst, port, proto, src=src)
        out.add(got.local if isinstance(got, Reached) else got)
    return out


@pytest.mark.kernel
def test_apply_change_apply(lab: tuple[Lab, Libnftables]) -> None:
    """After each apply the kernel equals the desired state, and traffic follows it."""
    lab_, kernel = lab
    steps: list[tuple[list[dict[str, Any]], set[str], set[str]]] = [
        (web(EPS[0], EPS[1]), {EPS[0], EPS[1]}, {EPS[0], EPS[1]}),
        (web(EPS[1], EPS[2]), {EPS[1], EPS[2]}, {EPS[1], EPS[2]}),
        (web(*EPS, externalTrafficPolicy="Local"), set(EPS), {EPS[0]}),
        (web(EPS[1], EPS[2], externalTrafficPolicy="Local"), {EPS[1], EPS[2]}, {"DROP"}),
        (web(*EPS, sessionAffinity="ClientIP"), None, None),  # type: ignore[list-item]
        (
            web(
                *EPS,
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
            ),
            None,
            None,
        ),  # type: ignore[list-item]
        (web(), {"REJECT"}, {"REJECT"}),
    ]
    for docs, internal, external in steps:
        rs = ruleset(*docs)
        sync(kernel, rs)
        assert in_sync(kernel, rs)
        if internal is None:  # sticky: one client, one endpoint
            assert len(reached(lab_, CLIENT, "172.30.0.10", 80)) == 1
            continue
        for src, dst, port, want in (
            (CLIENT, "172.30.0.10", 80, internal),
            (EXTERNAL, "192.168.0.2", 30080, external),
        ):
            tries = 1 if want <= {"DROP", "REJECT"} else 30  # a verdict needs one try
            assert reached(lab_, src, dst, port, tries=tries) == want
    sync(kernel, ruleset())
    assert reached(lab_, CLIENT, "172.30.0.10", 80, tries=1) == {"DROP"}


@pytest.mark.kernel
def test_drift_is_reported_and_repaired(lab: tuple[Lab, Libnftables]) -> None:
    """Hand edits are found precisely and undone with a small transaction."""
    lab_, kernel = lab
    rs = ruleset(*web(EPS[0], EPS[1]))
    sync(kernel, rs)
    in_ns(lab_.node, "nft", "-f", "-", stdin="table ip other {\n set s { type ipv4_addr; }\n}\n")
    handle = in_ns(lab_.node, "nft", "-a", "list", "chain", "ip", "nftproxy", "masquerading")
    first_rule = next(
        line for line in handle.splitlines() if "# handle" in line and "ct status" in line
    )
    edits = (
        "\n".join(
            [
                f"delete rule ip nftproxy masquerading handle {first_rule.rsplit(' ', 1)[1]}",
                "add element ip nftproxy backends-2 { 172.30.0.10 . tcp . 80 . 7 : 10.9.9.9 . 80 }",
                "flush chain ip nftproxy filter-forward",
                "add element ip other s { 10.0.0.1 }",
            ]
        )
        + "\n"
    )
    in_ns(lab_.node, "nft", "-f", "-", stdin=edits)
    desired, current = desired_tables(rs), read_tables(kernel)
    found = {
        (d.status, d.kind, d.where)
        for d in differences(plan_all(desired, current), desired, current)
    }
    assert ("missing", "rule", "masquerading") in found
    assert ("unexpected", "element", "backends-2") in found
    assert ("missing", "rule", "filter-forward") in found
    result = sync(kernel, rs)
    assert in_sync(kernel, rs)
    assert str(result.summary) == "0 added, 2 changed, 1 removed"
    assert "10.0.0.1" in in_ns(lab_.node, "nft", "list", "table", "ip", "other")
    in_ns(lab_.node, "nft", "delete", "table", "ip", "nftproxy")
    desired, current = desired_tables(rs), read_tables(kernel)
    assert ("missing", "table", "nftproxy") in {
        (d.status, d.kind, d.where)
        for d in differences(plan_all(desired, current), desired, current)
    }
    sync(kernel, rs)
    assert in_sync(kernel, rs)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[0], EPS[1]}


@pytest.mark.kernel
def test_no_gap_while_reapplying(lab: tuple[Lab, Libnftables], tmp_path: Path) -> None:
    """A client connecting in a loop never fails while rules are re-applied, changed,
    replaced whole, and applied by a fresh process."""
    lab_, kernel = lab
    sync(kernel, ruleset(*web(EPS[0], EPS[1])))
    stop = threading.Event()
    results: list[object] = []

    def client() -> None:
        while not stop.is_set():
            results.append(
                connect(lab_.hosts[ipaddress.ip_address(CLIENT)], "172.30.0.10", 80, "tcp")
            )

    worker = threading.Thread(target=client)
    worker.start()
    try:
        time.sleep(0.2)
        sync(kernel, ruleset(*web(EPS[0], EPS[1])))
        sync(kernel, ruleset(*web(EPS[1], EPS[2])))
        replace(kernel, ruleset(*web(EPS[1], EPS[2])))
        manifest = tmp_path / "web.json"
        import json  # noqa: PLC0415

        manifest.write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": web(EPS[0], EPS[2])})
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nftproxy.cli",
                "apply",
                "--netns",
                lab_.node,
                "-f",
                str(manifest),
                *NODE_FLAGS,
                "--checkpoint",
                str(tmp_path / "checkpoint"),
            ],
            check=True,
        )
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    failures = [r for r in results if not isinstance(r, Reached)]
    assert len(results) > 50 and not failures, (len(results), failures[:3])


class _UdpClient:
    """A connected UDP socket in a client's namespace; ``ask`` names the endpoint
    that answered."""

    def __init__(self, lab: Lab, src: str, dst: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        with namespace(lab.hosts[ipaddress.ip_address(src)]):
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.settimeout(1)
        self.sock.connect((dst, port))

    def ask(self) -> str:
        self.sock.send(b"?")
        return self.sock.recv(512).decode().split()[1]

    def __enter__(self) -> _UdpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _udp_sync(kernel: Libnftables, docs: list[dict[str, Any]], node: NodeConfig = NODE) -> int:
    """Apply docs as ``apply`` does; how many stale conntrack entries were deleted."""
    loaded = Loaded()
    load_objects(iter(docs), "test", loaded)
    state = compute_state(loaded.objects, node)
    rs = build(state)
    result = sync(kernel, rs)
    return kernel.delete_stale_flows(stale_plan(result, rs, serving_flows(state)))


@pytest.mark.kernel
def test_udp_client_leaves_a_removed_endpoint(lab: tuple[Lab, Libnftables]) -> None:
    """The conntrack entry to a removed endpoint is deleted: the next datagram goes elsewhere."""
    lab_, kernel = lab
    _udp_sync(kernel, web(EPS[1], EPS[2]))
    with _UdpClient(lab_, CLIENT, "172.30.0.10", 53) as client:
        first = client.ask()
        keep = EPS[2] if first == EPS[1] else EPS[1]
        assert _udp_sync(kernel, web(keep)) == 1
        assert client.ask() == keep


@pytest.mark.kernel
def test_a_sticky_udp_client_leaves_a_removed_endpoint(lab: tuple[Lab, Libnftables]) -> None:
    """ClientIP affinity keeps endpoints in the Service's own chain: a removed one's
    flows go too (kubernetes#19029, again in #139628)."""
    lab_, kernel = lab
    _udp_sync(kernel, web(EPS[1], EPS[2], sessionAffinity="ClientIP"))
    with _UdpClient(lab_, CLIENT, "172.30.0.10", 53) as client:
        first = client.ask()
        keep = EPS[2] if first == EPS[1] else EPS[1]
        assert _udp_sync(kernel, web(keep, sessionAffinity="ClientIP")) == 1
        assert client.ask() == keep


@pytest.mark.kernel
def test_a_terminating_endpoint_keeps_its_flow(lab: tuple[Lab, Libnftables]) -> None:
    """An endpoint that becomes serving-terminating leaves the rules (ready ones
    exist) but still serves: its clients' flows stay, as with kube-proxy."""
    lab_, kernel = lab
    _udp_sync(kernel, web(EPS[1], EPS[2]))
    with _UdpClient(lab_, CLIENT, "172.30.0.10", 53) as client:
        first = client.ask()
        other = EPS[2] if first == EPS[1] else EPS[1]
        docs = [
            service("web", ports=PORTS, type="NodePort"),
            slice_(
                "web",
                endpoint(first, ready=False, serving=True, terminating=True),
                endpoint(other),
                ports=SLICE_PORTS,
            ),
        ]
        assert _udp_sync(kernel, docs) == 0
        assert client.ask() == first


@pytest.mark.kernel
def test_a_deleted_udp_services_flows_go(lab: tuple[Lab, Libnftables]) -> None:
    """Flows to the ClusterIP and the NodePort of a deleted UDP Service are deleted."""
    lab_, kernel = lab
    node_port = [
        {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
    ]
    docs = [service("web", ports=node_port, type="NodePort"), web(EPS[1])[1]]
    _udp_sync(kernel, docs)
    with (
        _UdpClient(lab_, CLIENT, "172.30.0.10", 53) as via_cluster_ip,
        _UdpClient(lab_, EXTERNAL, "192.168.0.2", 30053) as via_node_port,
    ):
        assert via_cluster_ip.ask() == via_node_port.ask() == EPS[1]
        assert _udp_sync(kernel, []) == 2


@pytest.mark.kernel
def test_ipv6_udp_client_leaves_a_removed_endpoint() -> None:
    """The same for IPv6 (the conntrack dump of pyroute2 0.9 failed there with EINVAL)."""
    eps = ("fd00:1::1", "fd00:1::2")
    client_addr = "fd00:10::2"
    node = NodeConfig("node-a", (ipaddress.ip_address("2001:db8::2"),), (), ())

    def docs(*addrs: str) -> list[dict[str, Any]]:
        spec: dict[str, Any] = {"clusterIP": "fd00:30::10", "ipFamilies": ["IPv6"]}
        return [
            service("dns", ports=PORTS[1:], **spec),
            slice_("dns", *map(endpoint, addrs), ports=SLICE_PORTS[1:], family="IPv6"),
        ]

    with Lab("ct6") as lab_:
        lab_.add_node_ip(ipaddress.ip_address("2001:db8::2"))
        for addr in (client_addr, *eps):
            lab_.add_host(ipaddress.ip_address(addr))
        lab_.start_responders([53])
        kernel = Libnftables(lab_.node)
        _udp_sync(kernel, docs(*eps), node)
        with _UdpClient(lab_, client_addr, "fd00:30::10", 53) as client:
            first = client.ask()
            keep = eps[1] if first == eps[0] else eps[0]
            assert _udp_sync(kernel, docs(keep), node) == 1
            assert client.ask() == keep


class _BrokenOnce(Libnftables):
    """A kernel whose next transaction carries one command the kernel refuses."""

    def __init__(self, netns: str, failures: int) -> None:
        super().__init__(netns)
        self.failures = failures

    def run(self, script: str) -> None:
        if self.failures:
            self.failures -= 1
            script += "add rule ip nftproxy no-such-chain drop\n"
        super().run(script)


@pytest.mark.kernel
def test_failed_transaction_changes_nothing(lab: tuple[Lab, Libnftables]) -> None:
    lab_, kernel = lab
    old = ruleset(*web(EPS[0], EPS[1]))
    sync(kernel, old)
    broken = _BrokenOnce(lab_.node, failures=1)
    with pytest.raises(NftError) as err:
        sync(broken, ruleset(*web(EPS[2])))
    assert err.value.kind.value == "not found"
    assert in_sync(kernel, old)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[0], EPS[1]}
    result = sync_with_retries(_BrokenOnce(lab_.node, failures=1), ruleset(*web(EPS[2])))
    assert result.full
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[2]}


@pytest.mark.kernel
def test_large_scripts_run_in_an_nft_child(
    lab: tuple[Lab, Libnftables], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the size limit a script goes to ``nft -f -`` in the same namespace:
    the same transaction, the same typed errors, nothing applied on failure."""
    lab_, kernel = lab
    monkeypatch.setattr("nftproxy.nft.kernel.CHILD_SCRIPT_BYTES", 0)
    old = ruleset(*web(EPS[0], EPS[1]))
    replace(kernel, old)
    assert in_sync(kernel, old)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[0], EPS[1]}
    with pytest.raises(NftError) as err:
        kernel.run("flush table ip nftproxy\nadd rule ip nftproxy nosuchchain accept\n")
    assert err.value.kind.value == "not found" and "nosuchchain" in err.value.message
    assert in_sync(kernel, old)


@pytest.mark.kernel
def test_feature_probe(lab: tuple[Lab, Libnftables]) -> None:
    assert missing_features(lab[1]) == []
    bogus = {"a made-up statement": "chain c { frobnicate; }"}
    assert [name for name, _ in missing_features(lab[1], bogus)] == ["a made-up statement"]


def _rules(saved: str) -> list[str]:
    """iptables-save output without comments, packet counters (IPv6 neighbour traffic
    moves them) and tables that hold nothing but empty built-in chains (listing a
    legacy table creates it)."""
    kept: list[str] = []
    for block in re.split(r"(?m)^(?=\*)", saved):
        lines = [re.sub(r"\[\d+:\d+\]", "", x) for x in block.splitlines() if x[:1] != "#"]
        if any(x.startswith("-A") or x.endswith(" - ") for x in lines):
            kept += lines
    return kept


@pytest.mark.kernel
def test_cleanup_removes_ours_and_on_request_kube_proxy(lab: tuple[Lab, Libnftables]) -> None:
    """cleanup removes only nftproxy's tables; --kube-proxy removes what kube-proxy's
    own --cleanup removes, in both iptables backends and families: its nft tables,
    its chains with the jumps to them and its ipsets, and never kubelet's chains (the
    martian-packet drop stays) nor anybody else's KUBE-* chain."""
    lab_, kernel = lab
    sync(kernel, ruleset(*web(EPS[0])))
    in_ns(lab_.node, "nft", "-f", "-", stdin="table ip kube-proxy {\n}\ntable ip other {\n}\n")
    for tool in BACKENDS:
        in_ns(lab_.node, f"{tool}-restore", "--noflush", stdin=node_rules(tool))
    in_ns(lab_.node, "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
    in_ns(lab_.node, "ipset", "create", "KUBE-6-CLUSTER-IP", "hash:ip,port", "family", "inet6")
    in_ns(lab_.node, "ipset", "create", "OTHER", "hash:ip")
    in_ns(lab_.node, "ip", "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kipvs1")

    def save_all() -> dict[str, list[str]]:
        return {tool: _rules(in_ns(lab_.node, f"{tool}-save")) for tool in BACKENDS}

    before = save_all()
    assert cleanup(kernel) == ["table ip nftproxy"]
    assert "table ip kube-proxy" in in_ns(lab_.node, "nft", "list", "tables")

    listed = cleanup(kernel, kube_proxy=True, netns=lab_.node, dry_run=True)
    assert save_all() == before
    gone = cleanup(kernel, kube_proxy=True, netns=lab_.node)
    assert gone == listed
    assert "table ip kube-proxy" in gone and "interface kube-ipvs0" in gone
    assert {"ipset KUBE-CLUSTER-IP", "ipset KUBE-6-CLUSTER-IP"} <= set(gone)
    for tool in BACKENDS:
        assert len([g for g in gone if g.startswith(f"{tool} ")]) == KUBE_PROXY_CHAIN_COUNT
        saved = in_ns(lab_.node, f"{tool}-save")
        assert "KUBE-PROXY" not in saved and "KUBE-SERVICES" not in saved
        assert "KUBE-SVC-" not in saved and "KUBE-MARK-MASQ" not in saved
        for kept in (
            ":KUBE-FIREWALL",
            "-A INPUT -j KUBE-FIREWALL",
            "block incoming localnet connections",
            ":KUBE-KUBELET-CANARY",
            ":KUBE-IPTABLES-HINT",
            ":KUBE-MARK-DROP",
            "-A INPUT -j KUBE-CUSTOM",
        ):
            assert kept in saved, (tool, kept)
    assert in_ns(lab_.node, "ipset", "list", "-n").split() == ["OTHER"]
    assert "table ip other" in in_ns(lab_.node, "nft", "list", "tables")


class _ReadsCounted(Libnftables):
    reads = 0

    def read_table(self, family: Family, name: str, *, elements: bool = True) -> Any:
        self.reads += 1
        return super().read_table(family, name, elements=elements)


@pytest.mark.kernel
def test_restart_with_a_checkpoint_reads_no_elements_back(
    lab: tuple[Lab, Libnftables], tmp_path: Path
) -> None:
    """A checkpoint whose digest the kernel's tables hold stands in for reading the
    kernel; one that is not (the kernel was changed by someone else) is ignored."""
    lab_, kernel = lab
    cp = tmp_path / "checkpoint"
    first = sync(kernel, ruleset(*web(EPS[0], EPS[1])), checkpoint=cp)
    assert not first.from_checkpoint and cp.exists()
    assert cp.stat().st_mode & 0o777 == 0o600
    saved = json.loads(cp.read_text())  # plain data: nothing in it is code
    assert saved["version"] == 4 and set(saved["tables"]) == {"ip", "ip6"}
    assert "10.1.0.1\\u001f80" in cp.read_text()
    assert list(tmp_path.iterdir()) == [cp]  # no temporary file left
    applied = kernel.read_set(Family.IP, names.TABLE, names.APPLIED)
    assert applied is not None
    assert [e.comment for e in applied.elements] == [stamp_of(cp.read_bytes())]
    reader = _ReadsCounted(lab_.node)
    again = sync(reader, ruleset(*web(EPS[0], EPS[2])), checkpoint=cp)
    assert again.from_checkpoint and reader.reads == 0
    assert str(again.summary) == "0 added, 3 changed, 0 removed"  # remote: no hairpin element
    assert in_sync(kernel, ruleset(*web(EPS[0], EPS[2])))
    sync(kernel, ruleset(*web(EPS[1])))  # applied without the checkpoint: new generation
    third = sync(kernel, ruleset(*web(EPS[2])), checkpoint=cp)
    assert not third.from_checkpoint
    assert in_sync(kernel, ruleset(*web(EPS[2])))
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[2]}
    cp.write_bytes(cp.read_bytes()[:-100])  # damaged: no checkpoint, the kernel is read
    fourth = sync(kernel, ruleset(*web(EPS[0])), checkpoint=cp)
    assert not fourth.from_checkpoint
    assert in_sync(kernel, ruleset(*web(EPS[0])))
    assert sync(kernel, ruleset(*web(EPS[0])), checkpoint=cp).from_checkpoint


TAMPERED = [
    ("172.30.0.10\\u001ftcp", "172.30.0.10 } ; flush ruleset ; add element ip x y {\\u001ftcp"),
    ("10.1.0.1\\u001f80", "10.1.0.1\\u001f80; delete table ip nftproxy"),
    ("goto\\u001fclusterip/pick-1", "goto\\u001fx; flush ruleset"),
    ("ns/web/tcp/http", 'web\\\\\\"; flush ruleset; \\\\\\"'),
    ("10.1.0.1\\u001f", "10.1.0.9\\u001f"),  # harmless, but not what the kernel holds
]


@pytest.mark.kernel
@pytest.mark.parametrize(("was", "now"), TAMPERED)
def test_a_tampered_checkpoint_is_not_trusted(
    lab: tuple[Lab, Libnftables], tmp_path: Path, was: str, now: str
) -> None:
    """A checkpoint changed after it was written (an element that would smuggle nft
    commands in its key, value or comment, or merely a wrong one) is not the one the
    kernel's stamp vouches for: the kernel is read, and nothing of it reaches nft."""
    lab_, kernel = lab
    cp = tmp_path / "checkpoint"
    sync(kernel, ruleset(*web(EPS[0])), checkpoint=cp)
    text = cp.read_text()
    assert was in text
    cp.write_text(text.replace(was, now, 1))
    again = sync(kernel, ruleset(*web(EPS[1])), checkpoint=cp)
    assert not again.from_checkpoint
    assert in_sync(kernel, ruleset(*web(EPS[1])))
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[1]}


@pytest.mark.kernel
def test_diff_command_exit_codes_and_readers(
    lab: tuple[Lab, Libnftables], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``diff``: 0 in sync, 1 with the drift printed (text and JSON), the same through
    nft's reader; the kernel is read by a worker while the manifests are built."""
    import json  # noqa: PLC0415

    lab_, _ = lab
    manifest = tmp_path / "web.json"
    manifest.write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": web(EPS[0], EPS[1])})
    )
    flags = ["-f", str(manifest), *NODE_FLAGS, "--netns", lab_.node]
    assert main(["apply", *flags, "--checkpoint", ""]) == 0
    capsys.readouterr()
    for reader in ("netlink", "nft"):
        assert main(["diff", *flags, "--reader", reader]) == 0
        assert capsys.readouterr().out == "in sync\n"
    in_ns(lab_.node, "nft", "add element ip nftproxy cluster-ips { 172.30.9.9 }")
    outputs = []
    for reader in ("netlink", "nft"):
        assert main(["diff", *flags, "--reader", reader, "--json"]) == 1
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert [(d["status"], d["kind"], d["where"]) for d in outputs[0]] == [
        ("unexpected", "element", "cluster-ips")
    ]
    assert main(["diff", *flags]) == 1
    assert "172.30.9.9" in capsys.readouterr().out


@pytest.mark.kernel
def test_a_base_chain_policy_changed_by_hand_is_drift(lab: tuple[Lab, Libnftables]) -> None:
    """``policy drop`` set on one of our base chains would cut the node off: diff
    names the chain and apply puts ``policy accept`` back."""
    lab_, kernel = lab
    rs = ruleset(*web(EPS[0]))
    sync(kernel, rs)
    in_ns(
        lab_.node,
        "nft",
        "add chain ip nftproxy filter-forward { type filter hook forward priority -110; "
        "policy drop; }",
    )
    desired, current = desired_tables(rs), read_tables(kernel)
    (found,) = differences(plan_all(desired, current), desired, current)
    assert (found.status, found.kind, found.where) == ("changed", "chain", "filter-forward")
    assert found.text.endswith(
        "policy drop; -> type filter hook forward priority -110; policy accept;"
    )
    by_nft = read_tables(kernel, via_nft=True)[Family.IP]
    assert by_nft is not None
    forward = next(c for c in by_nft.chains if c.name == "filter-forward")
    assert forward.base is not None and forward.base.policy == VerdictKind.DROP
    sync(kernel, rs)
    assert in_sync(kernel, rs)
    assert "policy accept" in in_ns(
        lab_.node, "nft", "list", "chain", "ip", "nftproxy", "filter-forward"
    )


@pytest.mark.kernel
def test_a_dormant_table_is_drift_and_apply_wakes_it(lab: tuple[Lab, Libnftables]) -> None:
    """``flags dormant`` turns all of nftproxy's rules off at once: diff says so and
    apply clears it, after which traffic flows again."""
    lab_, kernel = lab
    rs = ruleset(*web(EPS[0]))
    sync(kernel, rs)
    in_ns(lab_.node, "nft", "add table ip nftproxy { flags dormant; }")
    assert reached(lab_, CLIENT, "172.30.0.10", 80, tries=3) != {EPS[0]}
    desired, current = desired_tables(rs), read_tables(kernel)
    (found,) = differences(plan_all(desired, current), desired, current)
    assert (found.status, found.kind, found.where) == ("changed", "table", "nftproxy")
    assert str(sync(kernel, rs).summary) == "0 added, 1 changed, 0 removed"
    assert in_sync(kernel, rs)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[0]}


@pytest.mark.kernel
def test_foreign_objects_inside_our_table_are_reported_and_removed(
    lab: tuple[Lab, Libnftables],
) -> None:
    """A set of a type nftproxy never uses, a chain and a rule of shapes it never
    writes, added to its table by hand: both readers report them, apply removes them."""
    lab_, kernel = lab
    rs = ruleset(*web(EPS[0]))
    sync(kernel, rs)
    edits = (
        "add set ip nftproxy macs { type ether_addr; elements = { 02:00:00:00:00:01 }; }\n"
        "add chain ip nftproxy extra\n"
        "add rule ip nftproxy extra counter\n"
        "insert rule ip nftproxy services ip protocol icmp counter accept\n"
    )
    in_ns(lab_.node, "nft", "-f", "-", stdin=edits)
    expected = {
        ("unexpected", "set", "macs"),
        ("unexpected", "chain", "extra"),
        ("unexpected", "rule", "services"),
    }
    for via_nft in (False, True):
        desired, current = desired_tables(rs), read_tables(kernel, via_nft=via_nft)
        if via_nft:  # nft's JSON shows no chain comments
            desired = without_chain_comments(desired)
        found = differences(plan_all(desired, current), desired, current)
        assert {(d.status, d.kind, d.where) for d in found} == expected, via_nft
    sync(kernel, rs)
    assert in_sync(kernel, rs)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == {EPS[0]}


NS63 = "n" * 62 + "1"
SVC63 = "s" + "v" * 61 + "2"
PORT63 = "p" * 63


@pytest.mark.kernel
def test_names_of_maximal_length_apply(lab: tuple[Lab, Libnftables]) -> None:
    """Namespace, Service and port names as long as the API allows: every sync works,
    and the kernel holds exactly the (cut) comments the builder made."""
    lab_, kernel = lab
    ports = [{"name": PORT63, "port": 53, "protocol": "UDP", "nodePort": 30053}]
    docs = [
        service(SVC63, ns=NS63, type="NodePort", ports=ports, sessionAffinity="ClientIP"),
        slice_(
            SVC63,
            endpoint(EPS[1]),
            ns=NS63,
            ports=[{"name": PORT63, "port": 53, "protocol": "UDP"}],
        ),
    ]
    rs = ruleset(*docs)
    sync(kernel, rs)
    assert in_sync(kernel, rs)
    assert reached(lab_, CLIENT, "172.30.0.10", 53, proto="udp", tries=1) == {EPS[1]}


@pytest.mark.kernel
def test_a_new_affinity_timeout_reaches_the_chain_comment(lab: tuple[Lab, Libnftables]) -> None:
    """The sticky chain's comment names the timeout; an incremental apply changes it
    (the kernel keeps a chain's comment on 'add chain', so the chain is made anew)."""
    lab_, kernel = lab
    sync(kernel, ruleset(*web(*EPS, sessionAffinity="ClientIP")))
    shorter = {"clientIP": {"timeoutSeconds": 60}}
    rs = ruleset(*web(*EPS, sessionAffinity="ClientIP", sessionAffinityConfig=shorter))
    seen = [d.text for d in drift(rs, read_tables(kernel)) if d.kind == "chain"]
    assert len(seen) == 2 and all(t.endswith('affinity 60s"') for t in seen), seen
    result = sync(kernel, rs)
    assert not result.full
    assert in_sync(kernel, rs)
    table = read_tables(kernel)[Family.IP]
    assert table is not None
    comments = {c.comment for c in table.chains if c.name.startswith("sticky-")}
    assert comments == {
        "ns/web/tcp/http: ClientIP affinity 60s",
        "ns/web/udp/dns: ClientIP affinity 60s",
    }
    assert len(reached(lab_, CLIENT, "172.30.0.10", 80)) == 1


class _Staged(Libnftables):
    """Loads in stages of 4 elements; records each stage's kind and whether the
    table was dormant after it; with ``fail_at``, that stage is refused (a script
    carries a bad command, netlink names a set that is not there)."""

    stage_elements = 4

    def __init__(self, netns: str, fail_at: int | None = None) -> None:
        super().__init__(netns)
        self.fail_at = fail_at
        self.dormant: list[bool] = []
        self.kinds: list[str] = []
        self.refused: list[str] = []

    def stage(self, stage: Stage) -> None:
        if self.fail_at == len(self.dormant):
            self.fail_at = None
            stage = _refused(stage)
        self.kinds.append("script" if isinstance(stage, str) else "netlink")
        try:
            super().stage(stage)
        except NftError:
            self.refused.append(self.kinds[-1])
            raise
        table = self.read_table(Family.IP, "nftproxy", elements=False)
        self.dormant.append(table is not None and table.dormant)


def _refused(stage: Stage) -> Stage:
    if isinstance(stage, str):
        return stage + "add rule ip nftproxy no-such-chain drop\n"
    tx, *rest = stage.transactions
    change = tx.changes[0]
    assert isinstance(change, AddElements)
    missing = dataclasses.replace(change, set=dataclasses.replace(change.set, name="no-such-set"))
    return ElementStage((dataclasses.replace(tx, changes=(*tx.changes, missing)), *rest))


@pytest.mark.kernel
def test_a_fresh_load_goes_in_stages_behind_a_dormant_table(
    lab: tuple[Lab, Libnftables],
) -> None:
    """Into an empty kernel: the tables dormant with empty sets, the elements in
    stages, then the tables woken; the result equals a one-script load."""
    lab_, _ = lab
    kernel = _Staged(lab_.node)
    rs = ruleset(*web(*EPS, sessionAffinity="ClientIP"), *web(*EPS)[1:])
    result = sync(kernel, rs)
    assert result.full and len(kernel.dormant) > 3
    assert kernel.dormant[:-1] == [True] * (len(kernel.dormant) - 1)
    assert kernel.dormant[-1] is False
    assert in_sync(kernel, rs)
    assert len(reached(lab_, CLIENT, "172.30.0.10", 80)) == 1  # sticky
    kernel.dormant.clear()
    sync(kernel, ruleset(*web(EPS[0])))  # the table is there: one transaction
    assert kernel.dormant == [False]


@pytest.mark.kernel
def test_a_staged_replace_goes_behind_a_dormant_table_when_large(
    lab: tuple[Lab, Libnftables],
) -> None:
    """A staged replace over our tables: more elements than a stage holds go in
    stages, the first replacing the tables with dormant ones (what was there is
    gone: a foreign chain in our table); fewer go as one script, never dormant."""
    lab_, _ = lab
    kernel = _Staged(lab_.node)
    sync(kernel, ruleset(*web(EPS[0])))
    in_ns(lab_.node, "nft", "add", "chain", "ip", "nftproxy", "foreign")
    kernel.dormant.clear()
    kernel.stage_elements = 1_000  # more than the ruleset holds
    replace(kernel, ruleset(*web(EPS[1])), staged=True)
    assert kernel.dormant == [False]
    kernel.stage_elements = 4
    in_ns(lab_.node, "nft", "add", "chain", "ip", "nftproxy", "foreign")
    kernel.dormant.clear()
    large = ruleset(*web(*EPS, sessionAffinity="ClientIP"), *web(*EPS)[1:])
    result = replace(kernel, large, staged=True)
    assert result.full and len(kernel.dormant) > 3
    assert kernel.dormant[:-1] == [True] * (len(kernel.dormant) - 1)
    assert kernel.dormant[-1] is False
    assert in_sync(kernel, large)
    assert len(reached(lab_, CLIENT, "172.30.0.10", 80)) == 1  # sticky


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["script", "netlink"])
def test_a_failed_stage_is_repaired_by_a_whole_load(
    lab: tuple[Lab, Libnftables], kind: str
) -> None:
    lab_, _ = lab
    rs = ruleset(*web(*EPS))
    probe = _Staged(lab_.node)
    probe.apply(Batch("nftproxy", load=rs, fresh=True))
    assert cleanup(probe)
    staged = _Staged(lab_.node, fail_at=probe.kinds.index(kind, 1))
    result = sync_with_retries(staged, rs)
    assert staged.refused == [kind]  # the stage was refused, and the whole load retried
    assert result.full
    assert in_sync(lab[1], rs)
    assert reached(lab_, CLIENT, "172.30.0.10", 80) == set(EPS)


@pytest.mark.kernel
def test_ipv6_clientip_affinity_keeps_the_endpoint() -> None:
    """ClientIP affinity over IPv6: the set holds ``ip6 saddr . id``; a client keeps
    its endpoint, and is recorded once, with that endpoint's id."""
    eps = ("fd00:1::1", "fd00:1::2", "fd00:1::3")
    client_addr = "fd00:10::2"
    node = NodeConfig("node-a", (ipaddress.ip_address("2001:db8::2"),), (), ())
    spec: dict[str, Any] = {
        "clusterIP": "fd00:30::10",
        "ipFamilies": ["IPv6"],
        "sessionAffinity": "ClientIP",
    }
    docs = [
        service("web", ports=PORTS[:1], **spec),
        slice_("web", *map(endpoint, eps), ports=SLICE_PORTS[:1], family="IPv6"),
    ]
    with Lab("aff6") as lab_:
        lab_.add_node_ip(ipaddress.ip_address("2001:db8::2"))
        for addr in (client_addr, *eps):
            lab_.add_host(ipaddress.ip_address(addr))
        lab_.start_responders([80])
        loaded = Loaded()
        load_objects(iter(docs), "test", loaded)
        sync(Libnftables(lab_.node), build(compute_state(loaded.objects, node)))
        (got,) = reached(lab_, client_addr, "fd00:30::10", 80, tries=20)
        listed = json.loads(in_ns(lab_.node, "nft", "-j", "list", "table", "ip6", "nftproxy"))
        (held,) = [
            o["set"] for o in listed["nftables"] if "affinity-" in o.get("set", {}).get("name", "")
        ]
        assert [e["elem"]["val"]["concat"] for e in held["elem"]] == [
            [client_addr, names.endpoint_id(got, 80)]
        ]
