"""The built image (NFTPROXY_IMAGE), as the chart's unprivileged mode runs it:
CAP_NET_ADMIN alone and a read-only root (see imagerun.py). Run by
``scripts/image.sh test``."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from helpers import (
    IPV4_BACKENDS,
    iptables_saved,
    node_rules,
    self_signed,
    serve,
    service_ips,
    wait_for,
)
from imagerun import Image, container

from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.netns import Lab, in_ns
from nftproxy.nft.kernel import in_netns

ROOT = Path(__file__).resolve().parents[2]
RULESETS = ROOT / "rulesets"
KINDS = ("nodeport", "loadbalancer", "session-affinity", "dual-stack")
CAP_NET_ADMIN = 1 << 12
KUBEADM = ROOT / "tests" / "fixtures" / "kube-proxy"
ACCOUNT = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is a link to /run


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Image]:
    state = tmp_path / "state"
    state.mkdir()
    with container(os.environ["NFTPROXY_IMAGE"], state) as img:
        yield img


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("image") as lab_:
        yield lab_


def node_flags() -> list[str]:
    return (RULESETS / "node-flags").read_text().split()


@pytest.mark.kernel
def test_only_net_admin_and_a_read_only_root(image: Image, lab: Lab) -> None:
    status = image.run(lab.node, "cat", "/proc/self/status")
    assert status.returncode == 0, status.stderr
    caps = {
        k: int(v, 16)
        for k, v in (line.split(":\t") for line in status.stdout.splitlines() if line[:3] == "Cap")
    }
    assert caps["CapEff"] == caps["CapBnd"] == CAP_NET_ADMIN
    touched = image.run(lab.node, "touch", "/etc/written")
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr
    assert image.run(lab.node, "touch", "/var/lib/nftproxy/written").returncode == 0


@pytest.mark.kernel
def test_apply_then_diff(image: Image, lab: Lab) -> None:
    """NodePort, LoadBalancer, sessionAffinity and IPv6: applied, then no difference."""
    manifests = [a for kind in KINDS for a in ("-f", f"/tmp/rulesets/{kind}/manifests.yaml")]
    volumes = {"/tmp/rulesets": RULESETS}
    applied = image.run(lab.node, "nftproxy", "apply", *manifests, *node_flags(), volumes=volumes)
    assert applied.returncode == 0, applied.stderr
    diffed = image.run(lab.node, "nftproxy", "diff", *manifests, *node_flags(), volumes=volumes)
    assert diffed.returncode == 0, diffed.stdout + diffed.stderr
    held = in_ns(lab.node, "nft", "list", "ruleset")
    assert "table ip nftproxy" in held and "table ip6 nftproxy" in held
    assert "ClientIP affinity" in held
    assert (image.state / "checkpoint").exists()  # in the one writable folder


@pytest.fixture
def chart_config(tmp_path: Path) -> dict[str, Path]:
    """The chart's rendered config.yaml, as a volume at /tmp/config."""
    chart = subprocess.run(
        [str(ROOT / ".tools" / "helm"), "template", "nftproxy", str(ROOT / "helm" / "nftproxy")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (configmap,) = [d for d in yaml.safe_load_all(chart) if d and d["kind"] == "ConfigMap"]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(configmap["data"]["config.yaml"])
    return {"/tmp/config": tmp_path / "config"}


CONFIG = ("--config", "/tmp/config/config.yaml")


@pytest.mark.kernel
def test_run_check_config_takes_the_charts_configmap(
    image: Image, lab: Lab, chart_config: dict[str, Path]
) -> None:
    checked = image.run(
        lab.node, "nftproxy", "run", *CONFIG, "--check-config", volumes=chart_config
    )
    assert checked.returncode == 0, checked.stderr
    assert '"min_sync_period": 1.0' in checked.stdout


ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"


@pytest.mark.kernel
def test_the_sysctls_are_the_privileged_init_containers(
    image: Image, lab: Lab, chart_config: dict[str, Path]
) -> None:
    """/proc/sys is read-only without privileges: the init container (--init-only,
    privileged) sets the conntrack sysctls; the proxy then finds them set."""
    in_ns(lab.node, "sysctl", "-qw", f"{ESTABLISHED}=1000")
    init_only = ("nftproxy", "run", *CONFIG, "--init-only")
    refused = image.run(lab.node, *init_only, volumes=chart_config)
    assert refused.returncode == 1 and ESTABLISHED in refused.stdout + refused.stderr
    assert in_ns(lab.node, "sysctl", "-n", ESTABLISHED).strip() == "1000"
    done = image.run(lab.node, *init_only, volumes=chart_config, privileged=True)
    assert done.returncode == 0, done.stderr
    assert in_ns(lab.node, "sysctl", "-n", ESTABLISHED).strip() == "86400"
    again = image.run(lab.node, *init_only, volumes=chart_config)
    assert again.returncode == 0 and ESTABLISHED not in again.stdout + again.stderr


@pytest.mark.kernel
def test_run_syncs_from_the_api_server_and_stops_on_sigterm(image: Image, lab: Lab) -> None:
    """run against the lab's API server (listening in the lab's namespace): the
    kernel programmed; SIGTERM: exit 0, the tables kept, and what was applied kept
    in the writable folder (the chart's hostPath) for the next start."""
    api = FakeAPIServer()
    serve(api, "web", "172.30.0.10", "10.1.0.1")
    (image.state / "checkpoint").unlink(missing_ok=True)  # apply's, perhaps
    with in_netns(lab.node):
        api.start()
    try:
        cmd = image.command(
            lab.node,
            *("nftproxy", "run", f"--master={api.url}", "--hostname-override=node-a"),
            *("--node-ip=192.168.0.2", "--healthz-bind-address=127.0.0.1:10256"),
        )
        _run_until(cmd, lambda: "172.30.0.10 . tcp . 80" in service_ips(lab.node))
    finally:
        api.stop()
    assert "172.30.0.10 . tcp . 80" in service_ips(lab.node)  # the tables stay
    assert (image.state / "checkpoint").exists()


def _run_until(cmd: list[str], *conditions: Callable[[], bool]) -> None:
    """cmd until every condition holds, one after the other; then SIGTERM: exit 0."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for condition in conditions:
            wait_for(condition, timeout=30)
    except AssertionError:
        met = False
    else:
        met = True
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert met, err[-3000:]
    assert proc.returncode == 0, err[-2000:]


TOKEN = "kube-proxy-service-account-token"


@pytest.mark.kernel
def test_kubeadms_kube_proxy_pod_runs_it_with_only_the_image_changed(
    image: Image, lab: Lab, tmp_path: Path
) -> None:
    """kubeadm's DaemonSet pod as buildah can play it: its command line, its
    ConfigMap's files at /var/lib/kube-proxy (kubeconfig.conf naming the API server
    and the service account's token and CA files), privileged. The kernel gets the
    Services; kube-proxy's iptables rules there before are gone, kubelet's stay."""
    account, configmap = tmp_path / "account", tmp_path / "configmap"
    account.mkdir()
    configmap.mkdir()
    cert, key = self_signed(tmp_path)
    (account / "ca.crt").write_text(Path(cert).read_text())
    (account / "token").write_text(TOKEN)
    api = FakeAPIServer(tls=(cert, key), token=TOKEN)
    serve(api, "web", "172.30.0.10", "10.1.0.1")
    with in_netns(lab.node):
        api.start()
    kubeconfig = (KUBEADM / "kubeadm-kubeconfig.conf").read_text()
    (configmap / "kubeconfig.conf").write_text(
        kubeconfig.replace("https://control-plane.example:6443", api.url)
    )
    (configmap / "config.conf").write_text((KUBEADM / "kubeadm-config.conf").read_text())
    for tool in IPV4_BACKENDS:
        in_ns(lab.node, f"{tool}-restore", "--noflush", stdin=node_rules(tool))
    try:
        cmd = image.command(
            lab.node,
            *("/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf"),
            "--hostname-override=node-a",
            volumes={"/var/lib/kube-proxy": configmap, ACCOUNT: account},
            privileged=True,
        )
        _run_until(
            cmd,
            lambda: "172.30.0.10 . tcp . 80" in service_ips(lab.node),
            lambda: "KUBE-SVC-" not in iptables_saved(lab.node),
        )
    finally:
        api.stop()
    saved = iptables_saved(lab.node)
    assert "KUBE-SERVICES" not in saved and "KUBE-MARK-MASQ" not in saved
    assert saved.count(":KUBE-FIREWALL") == 2 and saved.count(":KUBE-KUBELET-CANARY") == 6
    assert api.unauthorized == 0
