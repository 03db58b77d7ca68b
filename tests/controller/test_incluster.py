"""``nftproxy run`` as a pod runs it: the in-cluster service account, and the API
server's real address from ``KUBERNETES_SERVICE_HOST``/``_PORT`` (the chart's
``k8sServiceHost``), not the ``kubernetes`` Service's ClusterIP, which nothing has
programmed yet: the proxy is the one that programs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import endpoint, self_signed, serve, service, service_ips, slice_, wait_for

from nftproxy.lab.apiserver import FakeAPIServer
from nftproxy.lab.netns import Lab

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN = "in-cluster-token"


@contextmanager
def mount_point(path: Path) -> Iterator[None]:
    """path as a directory, removed afterwards as far as it was made here."""
    made = []
    for folder in reversed([path, *path.parents]):
        if not folder.exists():
            folder.mkdir()
            made.append(folder)
    try:
        yield
    finally:
        for folder in reversed(made):
            folder.rmdir()


@pytest.mark.kernel
def test_in_cluster_it_reaches_the_api_by_its_real_address(tmp_path: Path) -> None:
    account = tmp_path / "account"
    account.mkdir()
    cert, key = self_signed(tmp_path)
    (account / "ca.crt").write_bytes(Path(cert).read_bytes())
    (account / "token").write_text(TOKEN)
    (account / "namespace").write_text("kube-system")
    api = FakeAPIServer(tls=(cert, key), token=TOKEN)
    https = {"name": "https", "port": 443, "protocol": "TCP"}
    api.apply(service("kubernetes", "default", clusterIP="10.96.0.1", ports=[https]))
    apiserver_port = {**https, "port": 6443}
    api.apply(slice_("kubernetes", endpoint("192.168.0.10"), ns="default", ports=[apiserver_port]))
    # The account's files where the client reads them, in a mount namespace of the
    # process's own: the host's /var/run/secrets is left alone.
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    with mount_point(ACCOUNT), api, Lab("incluster") as lab:
        env = {
            **os.environ,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api.port),
        }
        cmd = ["unshare", "--mount", "--", "sh", "-c", script, str(account), str(ACCOUNT)]
        cmd += [sys.executable, "-m", "nftproxy.cli", "run", f"--netns={lab.node}"]
        cmd += ["--hostname-override=node-a", "--node-ip=192.168.0.2", "--min-sync-period=0"]
        cmd += ["--healthz-bind-address=", "--metrics-bind-address="]
        log = tmp_path / "proxy.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stderr=out, stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: "10.96.0.1 . tcp . 443" in service_ips(lab.node), timeout=30)
            api.apply(service("web", clusterIP="172.30.0.10"))  # and the watches work
            api.apply(slice_("web", endpoint("10.1.0.1")))
            wait_for(lambda: "172.30.0.10 . tcp . 80" in service_ips(lab.node), timeout=30)
            assert api.unauthorized == 0
            assert proc.poll() is None
        except AssertionError:
            print(log.read_text()[-3000:])
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert proc.returncode == 0, log.read_text()[-2000:]
    assert not ACCOUNT.exists() or not any(ACCOUNT.iterdir())  # the host's is untouched


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    server: {server}
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    tokenFile: account/token
"""


@pytest.mark.kernel
def test_a_rotated_token_file_is_read_again(tmp_path: Path) -> None:
    """kubeadm's kubeconfig names the account's token by tokenFile (here relative to
    the kubeconfig, as client-go reads it). kubelet swaps the file; the old token is
    refused from then on: the next requests carry the new one."""
    account = tmp_path / "account"
    account.mkdir()
    (account / "token").write_text("first")
    api = FakeAPIServer(token="first")
    serve(api, "web", "172.30.0.10", "10.1.0.1")
    with api, Lab("rotate") as lab:
        kubeconfig = tmp_path / "kubeconfig.conf"
        kubeconfig.write_text(KUBECONFIG.format(server=api.url))
        cmd = [sys.executable, "-m", "nftproxy.cli", "run", f"--kubeconfig={kubeconfig}"]
        cmd += [f"--netns={lab.node}", "--hostname-override=node-a", "--node-ip=192.168.0.2"]
        cmd += ["--min-sync-period=0", "--healthz-bind-address=", "--metrics-bind-address="]
        log = tmp_path / "proxy.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stderr=out, stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: "172.30.0.10 . tcp . 80" in service_ips(lab.node), timeout=30)
            rotated = account / "token.new"
            rotated.write_text("second")
            rotated.rename(account / "token")  # atomically, as kubelet swaps it
            api.token = "second"
            api.drop_watches()  # every watch comes back, with whatever token it has
            serve(api, "db", "172.30.0.20", "10.1.0.2")
            wait_for(lambda: "172.30.0.20 . tcp . 80" in service_ips(lab.node), timeout=30)
            assert api.unauthorized == 0, log.read_text()[-2000:]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert proc.returncode == 0, log.read_text()[-2000:]
