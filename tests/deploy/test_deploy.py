"""The Helm chart, the rendered manifest and the image's install: what an operator
installs is what `nftproxy run` accepts, with exactly the rights it needs.

helm comes from scripts/get_helm.py (.tools/helm); objects are validated offline
against the Kubernetes schemas bundled in kubernetes-validate.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nftproxy.cli.main import main, parser
from nftproxy.k8s.client import RateLimiter, event_writers, watched
from nftproxy.k8s.events import EventRecorder, Occurrence, Regarding
from nftproxy.lab.apiserver import FakeAPIServer

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "helm"
CHART = ROOT / "helm" / "nftproxy"
KUBEADM_CONFIG = ROOT / "tests" / "fixtures" / "kube-proxy" / "kubeadm-config.conf"
K8S_VERSION = "1.31"
MONITORING = {"PodMonitor", "ServiceMonitor"}  # Prometheus Operator CRDs: no bundled schema


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "get_helm.py")], check=True)
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=False)


def render(*sets: str) -> dict[str, dict[str, Any]]:
    """The chart's objects by kind (a second object of a kind under ``Kind/2``)."""
    flags = [
        f for s in sets for f in (("--set-file", s[5:]) if s.startswith("file:") else ("--set", s))
    ]
    done = helm("template", "nftproxy", str(CHART), "--namespace", "kube-system", *flags)
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            key = doc["kind"] if doc["kind"] not in out else f"{doc['kind']}/2"
            out[key] = doc
    return out


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = objs["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    return c


def config_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    return doc


VALUE_SETS = {
    "defaults": (),
    "shadow": ("shadow.enabled=true",),
    "extra args": ("extraArgs[0]=--min-sync-period=0", "extraArgs[1]=--nodeport-addresses=all"),
    "monitors": (
        "config.metricsBindAddress=0.0.0.0:10249",
        "serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
    ),
    "custom config": (
        "config.clusterCIDR=10.244.0.0/16",
        "config.detectLocalMode=NodeCIDR",
        "config.masqueradeAll=true",
        "config.nodePortAddresses[0]=192.168.0.0/16",
        "config.syncPeriod=1m0s",
        "config.conntrack.maxPerCore=0",
        "hostPorts=false",
        "serviceCounters=false",
        "serviceCIDR=10.96.0.0/12",
        "loadModules=true",
    ),
    "interface detector": (
        "config.detectLocalMode=InterfaceNamePrefix",
        "config.detectLocal.interfaceNamePrefix=veth",
    ),
    "kubeadm's config file": (
        f"file:configFile={KUBEADM_CONFIG}",
        "hostPorts=false",
        "serviceCounters=false",
    ),
    "unprivileged": ("privileged=false", "loadModules=true"),
    "kube-proxy compatible": ("kubeProxyCompat=true", "serviceMonitor.enabled=true"),
    "dashboard": ("dashboard.enabled=true", "dashboard.namespace=monitoring"),
}


def test_helm_lint() -> None:
    done = helm("lint", str(CHART), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_daemonset_runs_where_kube_proxy_runs() -> None:
    objs = render()
    ds = objs["DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    c = container(objs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    assert "--hostname-override=$(NODE_NAME)" in c["args"]
    node_name = next(e for e in c["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] is True
    assert "/run/xtables.lock" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["xtables-lock"]["hostPath"]["type"] == "FileOrCreate"
    # The checkpoint outlives the container, on the node (the root is read-only).
    assert mounts["/var/lib/nftproxy"]["name"] == "state"
    assert volumes["state"]["hostPath"] == {
        "path": "/var/lib/nftproxy",
        "type": "DirectoryOrCreate",
    }
    assert "--dry-run" not in c["args"]


def test_unprivileged_the_proxy_has_net_admin_only_and_an_init_container_the_sysctls() -> None:
    """privileged=false: the proxy container drops all but NET_ADMIN (and SYS_MODULE
    when asked), read-only root, RuntimeDefault seccomp; a privileged init
    container runs the same command with --init-only (none in shadow mode)."""
    objs = render("privileged=false", "loadModules=true")
    spec = objs["DaemonSet"]["spec"]["template"]["spec"]
    c = container(objs)
    assert c["securityContext"] == {
        "runAsUser": 0,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_MODULE"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (init,) = spec["initContainers"]
    assert init["securityContext"]["privileged"] is True
    assert init["args"] == [*c["args"], "--init-only"]
    assert init["env"] == c["env"] and init["image"] == c["image"]
    assert "initContainers" not in render()["DaemonSet"]["spec"]["template"]["spec"]
    shadow = render("privileged=false", "shadow.enabled=true")["DaemonSet"]["spec"]["template"]
    assert "initContainers" not in shadow["spec"]


def test_kube_proxy_compat_looks_like_kube_proxy_to_its_monitors() -> None:
    """kubeProxyCompat: the pods carry k8s-app: kube-proxy (the selector does not
    change) and /metrics listens on the node's address, port 10249; not with shadow."""
    objs = render("kubeProxyCompat=true")
    ds = objs["DaemonSet"]
    assert ds["spec"]["template"]["metadata"]["labels"]["k8s-app"] == "kube-proxy"
    assert "k8s-app" not in ds["spec"]["selector"]["matchLabels"]
    c = container(objs)
    assert "--metrics-bind-address=$(NODE_IP):10249" in c["args"]
    node_ip = next(e for e in c["env"] if e["name"] == "NODE_IP")
    assert node_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert {"name": "metrics", "containerPort": 10249, "protocol": "TCP"} in c["ports"]
    assert "k8s-app" not in render()["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    both = helm("template", "x", str(CHART), "--set", "kubeProxyCompat=true,shadow.enabled=true")
    assert both.returncode != 0 and "cannot shadow it" in both.stderr


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar() -> None:
    objs = render("dashboard.enabled=true", "dashboard.labels.release=prom")
    dash = next(
        o
        for k, o in objs.items()
        if k.startswith("ConfigMap") and "dashboard" in o["metadata"]["name"]
    )
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["metadata"]["labels"]["release"] == "prom"
    board = json.loads(dash["data"]["nftproxy.json"])
    assert board == json.loads((CHART / "dashboards" / "nftproxy.json").read_text())
    assert all("dashboard" not in o["metadata"]["name"] for o in render().values())


def _granted(objs: dict[str, dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for r in objs["ClusterRole"]["rules"]
        for group in r["apiGroups"]
        for resource in r["resources"]
        for verb in r["verbs"]
    }


def _called(host_ports: bool, shadow: bool = False) -> set[tuple[str, str, str]]:
    """What ``run`` asks the API server for: list and watch of each collection the
    calls :func:`watched` names reach (read off the lab API server's request log),
    and the Events it writes (not in shadow mode)."""
    out = set()
    with FakeAPIServer() as server:
        cfg = client.Configuration()
        cfg.host = server.url
        api = client.ApiClient(cfg)
        for w in watched(api, "node-a", host_ports=host_ports, limiter=RateLimiter(-1, 1)):
            try:
                w.call(limit=1, _request_timeout=5).release_conn()
            except ApiException as err:  # not served by the lab (ServiceCIDRs): still asked
                assert err.status == 404
        for request in server.requests:
            path = request.split()[1].partition("?")[0].strip("/").split("/")
            group = "" if path[0] == "api" else path[1]  # api/v1/PLURAL, apis/GROUP/VERSION/PLURAL
            out |= {(group, path[-1], verb) for verb in ("list", "watch")}
    if not shadow:
        out |= _written()
    return out


def _written() -> set[tuple[str, str, str]]:
    """What the Event writers send, read off the lab API server's request log."""
    verbs = {"POST": "create", "PATCH": "patch"}
    with FakeAPIServer() as server:
        cfg = client.Configuration()
        cfg.host = server.url
        create, patch = event_writers(client.ApiClient(cfg), RateLimiter(-1, 1))
        recorder = EventRecorder(create, patch, "node-a")
        twice = Occurrence(Regarding("Service", "v1", "web", "ns"), "Reason", "Action", "note")
        recorder.handle(twice)  # an Event
        recorder.handle(twice)  # its series
        sent = [r.split() for r in server.requests]
    out = set()
    for method, path in sent:
        parts = path.strip("/").split("/")  # apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]
        out.add((parts[1], parts[5], verbs[method]))
    return out


@pytest.mark.parametrize("host_ports", [True, False])
def test_rbac_is_exactly_what_run_calls(host_ports: bool) -> None:
    """The ClusterRole grants exactly the client's calls: Pods only with hostPorts,
    Events created and patched (not in shadow mode), no wildcard."""
    objs = render(f"hostPorts={str(host_ports).lower()}")
    granted = _granted(objs)
    assert granted == _called(host_ports)
    assert ("events.k8s.io", "events", "create") in granted
    shadow = _granted(render(f"hostPorts={str(host_ports).lower()}", "shadow.enabled=true"))
    assert shadow == _called(host_ports, shadow=True)
    assert ("", "pods", "list") in granted if host_ports else ("", "pods", "list") not in granted
    assert not any("*" in part for g in granted for part in g)
    binding = objs["ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]


def test_the_api_server_is_reached_by_its_own_address() -> None:
    """k8sServiceHost/k8sServicePort become the in-cluster variables; "auto" cannot
    look anything up offline and says so; DNS is the node's."""
    c = container(render("k8sServiceHost=10.0.0.1", "k8sServicePort=6443"))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert "KUBERNETES_SERVICE_HOST" not in {e["name"] for e in container(render())["env"]}
    done = helm("template", "x", str(CHART), "--set", "k8sServiceHost=auto")
    assert done.returncode != 0 and "set k8sServiceHost and k8sServicePort" in done.stderr
    assert render()["DaemonSet"]["spec"]["template"]["spec"]["dnsPolicy"] == "Default"


PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: probe
data:
  server: {{ include "nftproxy.serverOf" .Values.kubeconfig | quote }}
  address: {{ include "nftproxy.hostPort" .Values.server | quote }}
"""


@pytest.mark.parametrize(
    ("server", "host", "port"),
    [
        ("https://control-plane.example:6443", "control-plane.example", "6443"),
        ("https://10.0.0.1", "10.0.0.1", "443"),
        ("https://node1", "node1", "443"),
        ("https://[fd00::1]:6443", "fd00::1", "6443"),
        ("https://[fd00::1]", "fd00::1", "443"),
    ],
)
def test_auto_reads_the_server_as_kubeadm_writes_it(
    tmp_path: Path, server: str, host: str, port: str
) -> None:
    """What "auto" does with what its lookups find, offline: the chart's own helpers
    in a scratch chart, given kubeadm's kubeconfig.conf and server URLs."""
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    helpers = CHART / "templates" / "_helpers.tpl"
    (chart / "templates" / "_helpers.tpl").write_text(helpers.read_text())
    (chart / "templates" / "probe.yaml").write_text(PROBE)
    kubeconfig = ROOT / "tests" / "fixtures" / "kube-proxy" / "kubeadm-kubeconfig.conf"
    done = helm(
        "template",
        "probe",
        str(chart),
        "--set-file",
        f"kubeconfig={kubeconfig}",
        "--set",
        f"server={server}",
    )
    assert done.returncode == 0, done.stderr
    data = yaml.safe_load(done.stdout)["data"]
    assert data["server"] == "https://control-plane.example:6443"
    assert yaml.safe_load(data["address"]) == {"host": host, "port": port}


def test_shadow_mode_applies_nothing_and_keeps_kube_proxys_ports() -> None:
    objs = render("shadow.enabled=true")
    c = container(objs)
    assert "--dry-run" in c["args"]
    assert c["livenessProbe"]["httpGet"]["port"] == 10266
    cfg = config_of(objs)
    assert cfg["healthzBindAddress"] == "0.0.0.0:10266"
    assert cfg["metricsBindAddress"] == "127.0.0.1:10259"


def test_monitors_need_metrics_on_a_reachable_address() -> None:
    objs = render(*VALUE_SETS["monitors"])
    assert objs["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    assert objs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert objs["Service"]["spec"]["ports"][0]["port"] == 10249
    done = helm("template", "x", str(CHART), "--set", "podMonitor.enabled=true")
    assert done.returncode != 0 and "metricsBindAddress" in done.stderr


def test_schema_refuses_bad_values() -> None:
    for bad in ("config.detectLocalMode=Bogus", "config.syncPeriod=soon", "bogus=1"):
        assert helm("template", "x", str(CHART), "--set", bad).returncode != 0, bad


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_valid_kubernetes(name: str) -> None:
    for obj in render(*VALUE_SETS[name]).values():
        if obj["kind"] not in MONITORING:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_run_accepts_the_config_and_the_args(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ConfigMap's KubeProxyConfiguration passes `run --check-config`, and every
    DaemonSet arg is a flag `nftproxy run` has."""
    objs = render(*VALUE_SETS[name])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(objs["ConfigMap"]["data"]["config.yaml"])
    args = [a.replace("$(NODE_NAME)", "node-a") for a in container(objs)["args"]]
    args = [a.replace("$(NODE_IP)", "192.168.0.2") for a in args]
    args = [a.replace("/etc/nftproxy/config.yaml", str(cfg)) for a in args]
    parser().parse_args(args)  # exits on an unknown flag
    assert main([*args, "--check-config"]) == 0
    printed = capsys.readouterr().out
    if name == "custom config":
        assert '"detect_local_mode": "NodeCIDR"' in printed
        assert '"masquerade_all": true' in printed and '"host_ports": false' in printed
        assert '"service_counters": false' in printed
        assert '"sync_period": 60.0' in printed and "10.96.0.0/12" in printed
    if name == "interface detector":
        assert '"pod_interface": "veth*"' in printed
    if name == "kubeadm's config file":  # kubeadm's zeros are defaults; the chart's flags win
        assert '"cluster_cidr": [\n    "10.244.0.0/16"\n  ]' in printed
        assert '"sync_period": 30.0' in printed and '"host_ports": false' in printed
        assert '"service_counters": false' in printed


def test_the_rendered_manifest_is_current() -> None:
    """deploy/nftproxy.yaml is the chart with its defaults (scripts/render_deploy.sh)."""
    done = helm("template", "nftproxy", str(CHART), "--namespace", "kube-system")
    committed = (ROOT / "deploy" / "nftproxy.yaml").read_text()
    header, body = committed.split("\n", 2)[:2], committed.split("\n", 2)[2]
    assert all(line.startswith("# ") for line in header)
    assert body == done.stdout, "stale: run scripts/render_deploy.sh"


def test_the_image_installs_with_the_script_ci_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    assert any("scripts/install.sh /opt/nftproxy" in r for r in runs)
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "bash scripts/install.sh .venv --dev" in bootstrap
    entry = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert shlex.split(entry.split(None, 1)[1].strip("[]").replace(",", " ")) == [
        "nftproxy",
        "run",
    ]


@pytest.mark.kernel  # as root: the script may call apt-get
def test_the_install_script_makes_a_working_image_venv(tmp_path: Path) -> None:
    """What the Dockerfile's builder runs, into a fresh venv: the package (not
    editable, no dev tools, its hot modules compiled) and the locked dependencies,
    with the libnftables binding; no pip, no kubernetes.aio; and a `run` that
    takes the chart's config."""
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install.sh"), str(venv), "--image"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text(render()["ConfigMap"]["data"]["config.yaml"])
    check = [str(venv / "bin" / "nftproxy"), "run", "--config", str(cfg), "--check-config"]
    done = subprocess.run(check, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"min_sync_period": 1.0' in done.stdout
    probe = [str(venv / "bin" / "python"), "-c", "import nftables, pytest"]
    done = subprocess.run(probe, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert "No module named 'pytest'" in done.stderr  # nftables imports; no dev tools
    for gone in ("pip", "setuptools", "kubernetes.aio", "aiohttp"):
        probe = [str(venv / "bin" / "python"), "-c", f"import {gone}"]
        done = subprocess.run(probe, capture_output=True, text=True, check=False, cwd=tmp_path)
        assert "No module named" in done.stderr, gone
    where = [
        str(venv / "bin" / "python"),
        "-c",
        "import nftproxy.proxy.state as m; print(m.__file__)",
    ]
    done = subprocess.run(where, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.strip().endswith(".so")  # compiled with mypyc (setup.py)
