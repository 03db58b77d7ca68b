"""The nftproxy command: render, its flags, its exit status and what it reports."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from helpers import NODE_FLAGS, endpoint, service, slice_

from nftproxy.cli.main import main
from nftproxy.lab.netns import Lab, in_ns


def _manifest(tmp_path: Path, *docs: dict[str, object]) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path


def _render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["render", *args])
    out, err = capsys.readouterr()
    return code, out, err


class TestRender:
    def test_prints_a_loadable_script(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = _manifest(tmp_path, service(), slice_("svc", endpoint("10.1.0.1")))
        code, out, _ = _render(capsys, "-f", str(path), *NODE_FLAGS)
        assert code == 0
        assert out.startswith("add table ip nftproxy\ndelete table ip nftproxy\n")
        assert "172.30.0.10 . tcp . 80" in out and "10.1.0.1 . 8080" in out

    def test_bad_object_is_reported_and_skipped(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = _manifest(tmp_path, service("bad", clusterIP="1.2.3"), service("good"))
        code, out, err = _render(capsys, "-f", str(path), *NODE_FLAGS)
        assert code == 0
        assert "172.30.0.10" in out
        assert str(path) in err and "Service ns/bad" in err and "spec.clusterIPs[0]" in err

    def test_strict_fails_on_a_bad_object(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = _manifest(tmp_path, service("bad", clusterIP="1.2.3"), service("good"))
        code, out, _ = _render(capsys, "--strict", "-f", str(path), *NODE_FLAGS)
        assert code == 1 and "172.30.0.10" in out

    def test_an_unreadable_file_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(": : :\n")
        code, out, err = _render(capsys, "-f", str(bad), *NODE_FLAGS)
        assert code == 2 and out == "" and f"{bad}: unreadable" in err

    def test_only_invalid_objects_is_nothing_usable(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(json.dumps(service(ports=[{"port": 99999}])))
        code, out, err = _render(capsys, "-f", str(bad), *NODE_FLAGS)
        assert code == 1 and out == "" and "nothing usable" in err

    def test_config_file_and_flags_that_win(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        cfg = tmp_path / "kp.yaml"
        cfg.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "hostnameOverride: node-b\nclusterCIDR: 10.0.0.0/8\nnftables: {masqueradeAll: true}\n"
            "nodePortAddresses: [192.168.1.0/24]\n"
        )
        path = _manifest(
            tmp_path,
            service(type="NodePort", ports=[{"name": "p", "port": 80, "nodePort": 30001}]),
            slice_("svc", endpoint("10.1.0.1", node="node-b")),
        )
        ips = ["--node-ip", "192.168.0.2", "--node-ip", "192.168.1.2"]
        code, out, _ = _render(capsys, "-f", str(path), "--config", str(cfg), *ips)
        assert code == 0
        assert "192.168.1.2 . tcp . 30001" in out and "192.168.0.2 . tcp . 30001" not in out
        assert (
            "chain clusterip/pick-1 {" in out
            and "\t\tjump mark-for-masquerade\n\t\tgoto pick-1" in out
        )
        code, out, _ = _render(
            capsys, "-f", str(path), "--config", str(cfg), *ips, "--nodeport-addresses", "primary"
        )
        assert "192.168.0.2 . tcp . 30001" in out

    def test_host_ports_off_by_flag_or_config(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pod: dict[str, object] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            },
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.5.5"}]},
        }
        path = _manifest(tmp_path, pod)
        flags = ["-f", str(path), *NODE_FLAGS]
        assert ". tcp . 8080" in _render(capsys, *flags)[1]
        assert ". tcp . 8080" not in _render(capsys, *flags, "--host-ports=false")[1]
        cfg = tmp_path / "kp.yaml"
        cfg.write_text("kind: KubeProxyConfiguration\nhostPorts: false\n")
        assert ". tcp . 8080" not in _render(capsys, *flags, "--config", str(cfg))[1]
        assert (
            ". tcp . 8080" in _render(capsys, *flags, "--config", str(cfg), "--host-ports=true")[1]
        )
        assert main(["render", *flags, "--host-ports=maybe"]) == 2
        assert (
            capsys.readouterr().err == "nftproxy: --host-ports: want true or false, not 'maybe'\n"
        )

    def test_node_and_service_cidrs_among_the_manifests(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A Node named as this node gives addresses (NodePorts move to them), zone
        (topology hints) and podCIDRs (with NodeCIDR); another Node is reported and
        ignored; ServiceCIDRs replace --service-cidr, as in run."""

        def node(name: str, ip: str, zone: str) -> dict[str, object]:
            return {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
                "spec": {"podCIDRs": ["10.9.0.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }

        hinted = [
            {**endpoint("10.1.0.1"), "hints": {"forZones": [{"name": "zone-a"}]}},
            {**endpoint("10.1.0.2"), "hints": {"forZones": [{"name": "zone-b"}]}},
        ]
        cidr: dict[str, object] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["172.31.0.0/16"]},
        }
        svc = service(type="NodePort", ports=[{"port": 80, "nodePort": 30080, "name": "p"}])
        docs: list[dict[str, object]] = [
            svc,
            slice_("svc", *hinted),
            node("node-a", "192.168.7.7", "zone-a"),
        ]
        path = _manifest(tmp_path, *docs, node("node-b", "192.168.8.8", "zone-b"), cidr)
        code, out, err = _render(capsys, "-f", str(path), *NODE_FLAGS)
        assert code == 0
        assert "192.168.7.7 . tcp . 30080" in out and "192.168.0.2 . tcp . 30080" not in out
        assert "10.1.0.1 . 8080" in out and "10.1.0.2" not in out
        assert "172.31.0.0/16" in out and "172.30.0.0/16" not in out
        assert "Node node-b" in err and "not this node (node-a)" in err
        _, out, _ = _render(capsys, "-f", str(path), *NODE_FLAGS, "--detect-local-mode=NodeCIDR")
        assert "10.9.0.0/24" in out and "10.0.0.0/8" not in out
        path = _manifest(tmp_path, *docs[:2])
        _, out, _ = _render(capsys, "-f", str(path), *NODE_FLAGS)
        assert "10.1.0.2 . 8080" in out and "192.168.0.2 . tcp . 30080" in out

    def test_interface_detectors(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """BridgeInterface and InterfaceNamePrefix, by flag or KubeProxyConfiguration:
        pod traffic is matched by iifname, not by --cluster-cidr; each mode needs its name."""
        path = _manifest(tmp_path, service(), slice_("svc", endpoint("10.1.0.1")))
        flags = ["-f", str(path), *NODE_FLAGS]
        mode = "--detect-local-mode=InterfaceNamePrefix"
        _, out, _ = _render(capsys, *flags, mode, "--pod-interface-name-prefix=veth")
        assert 'iifname != "veth*"' in out and "@pod-cidrs" not in out.split("chain")[-1]
        cfg = tmp_path / "kp.yaml"
        cfg.write_text(
            "kind: KubeProxyConfiguration\ndetectLocalMode: BridgeInterface\n"
            "detectLocal: {bridgeInterface: cbr0}\n"
        )
        _, out, _ = _render(capsys, *flags, "--config", str(cfg))
        assert 'iifname != "cbr0"' in out
        assert main(["render", *flags, mode]) == 2
        assert "--pod-interface-name-prefix" in capsys.readouterr().err
        assert main(["run", "--check-config", mode]) == 2  # run --check-config sees it too
        assert "--pod-interface-name-prefix" in capsys.readouterr().err
        cfg.write_text("kind: KubeProxyConfiguration\ndetectLocal: {bridge: cbr0}\n")
        assert main(["render", *flags, "--config", str(cfg)]) == 0  # lenient, as kube-proxy
        assert "detectLocal.bridge: unknown field" in capsys.readouterr().err

    def test_bad_flag_value(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = _manifest(tmp_path, service())
        code = main(["render", "-f", str(path), *NODE_FLAGS, "--nodeport-addresses", "10.0.0/33"])
        assert code == 2
        assert "10.0.0/33" in capsys.readouterr().err


@pytest.mark.kernel
def test_rendered_script_loads_over_an_older_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Render, load, change the objects, render and load again: only the new state is left."""
    old = _manifest(tmp_path, service(), slice_("svc", endpoint("10.1.0.1")))
    _, first, _ = _render(capsys, "-f", str(old), *NODE_FLAGS)
    new = _manifest(tmp_path, service(clusterIP="172.30.0.99"), slice_("svc", endpoint("10.1.0.2")))
    _, second, _ = _render(capsys, "-f", str(new), *NODE_FLAGS)
    with Lab("cli") as lab:
        lab.load(first)
        lab.load(second)
        listed = in_ns(lab.node, "nft", "list", "table", "ip", "nftproxy")
        assert "172.30.0.99" in listed and "10.1.0.2" in listed
        assert "172.30.0.10" not in listed and "10.1.0.1 " not in listed


@pytest.mark.kernel
def test_node_addresses_are_read_from_the_host() -> None:
    """Without --node-ip: global addresses, the default route's interface first."""
    from nftproxy.settings.host import node_ips  # noqa: PLC0415 - pyroute2 only for this test

    with Lab("netinfo") as lab:
        lab.add_node_ip(ipaddress.ip_address("192.168.7.7"))
        ips = [str(a) for a in node_ips(lab.node)]
    assert ips[0] in ("100.64.0.1", "fd00:64::1")  # on the interface of the default route
    assert "192.168.7.7" in ips and "127.0.0.1" not in ips


@pytest.mark.parametrize("command", ["apply", "diff", "cleanup"])
def test_a_missing_namespace_is_an_error_not_created(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(json.dumps(service("web")))
    manifests = ["-f", str(path), *NODE_FLAGS] if command != "cleanup" else []
    assert main([command, *manifests, "--netns", "nftproxy-no-such-ns"]) == 2
    assert "no such network namespace" in capsys.readouterr().err
    assert not Path("/run/netns/nftproxy-no-such-ns").exists()
