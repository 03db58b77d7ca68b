"""kube-proxy's configuration read as kube-proxy reads it: real files and command
lines give exactly kube-proxy's effective settings; bad values are one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nftproxy.cli.main import main
from nftproxy.settings import DEFAULTS
from nftproxy.settings.durations import format_duration, parse_duration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "kube-proxy"
KUBEADM = FIXTURES / "kubeadm-config.conf"


def checked(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """What ``run --check-config`` prints for args (exit 0), and its warnings."""
    code = main(["run", *args, "--check-config"])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed: dict[str, Any] = json.loads(out)
    return printed, err


def check(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """What ``run --check-config`` prints for args."""
    return checked(capsys, *args)[0]


def expected(**changed: Any) -> dict[str, Any]:
    """The printed settings: kube-proxy's defaults with changed, as JSON has them."""
    out: dict[str, Any] = json.loads(json.dumps({**DEFAULTS.as_dict(), **changed}))
    out.setdefault("sysctls", {})
    return out


def args_of(name: str) -> list[str]:
    text = (FIXTURES / name).read_text()
    return [a.replace("/var/lib/kube-proxy/config.conf", str(KUBEADM)) for a in text.split()]


CONNTRACK_DEFAULT = {
    "nf_conntrack_tcp_timeout_established": 86400,
    "nf_conntrack_tcp_timeout_close_wait": 3600,
}


def _with_table(sysctls: dict[str, int], per_core: int, minimum: int) -> dict[str, int]:
    import os  # noqa: PLC0415

    return {"nf_conntrack_max": max(per_core * (os.cpu_count() or 1), minimum), **sysctls}


class TestRealConfigurations:
    def test_kubeadms_configmap_is_kube_proxys_defaults(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every zero of kubeadm's file is kube-proxy's default."""
        got, err = checked(capsys, "--config", str(KUBEADM))
        want = expected(
            config=str(KUBEADM),
            cluster_cidr=["10.244.0.0/16"],
            kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
            sysctls=_with_table(CONNTRACK_DEFAULT, 32768, 131072),
        )
        assert got == want
        assert (got["sync_period"], got["min_sync_period"]) == (30.0, 1.0)
        assert got["healthz_bind_address"] == "0.0.0.0:10256"
        assert got["metrics_bind_address"] == "127.0.0.1:10249"
        assert (got["qps"], got["burst"], got["masquerade_bit"]) == (5.0, 10, 14)
        assert err == ""  # no warning: every field kubeadm sets is a zero or honoured

    def test_kind_ipv6(self, capsys: pytest.CaptureFixture[str]) -> None:
        path = FIXTURES / "kind-ipv6.conf"
        got = check(capsys, "--config", str(path))
        assert got == expected(
            config=str(path),
            bind_address="::",
            healthz_bind_address="[::]:10256",
            metrics_bind_address="[::1]:10249",
            cluster_cidr=["fd00:10:244::/56"],
            kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
            conntrack_max_per_core=0,
            sysctls=CONNTRACK_DEFAULT,
        )

    def test_kind_dual_stack(self, capsys: pytest.CaptureFixture[str]) -> None:
        path = FIXTURES / "kind-dual.conf"
        got, err = checked(capsys, "--config", str(path))
        assert got == expected(
            config=str(path),
            cluster_cidr=["10.244.0.0/16", "fd00:10:244::/56"],
            kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
            conntrack_max_per_core=0,
            sysctls=CONNTRACK_DEFAULT,
        )
        assert "mode: 'iptables' ignored" in err

    def test_a_written_out_file_with_every_value(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The nftables section wins in nftables mode; oomScoreAdj is warned about."""
        path = FIXTURES / "written.conf"
        got, err = checked(capsys, "--config", str(path))
        assert got == expected(
            config=str(path),
            hostname_override="worker-7",
            bind_address_hard_fail=True,
            healthz_bind_address="0.0.0.0:10256",
            metrics_bind_address="0.0.0.0:10249",
            sync_period=60.0,
            min_sync_period=2.0,
            cluster_cidr=["10.100.0.0/16"],
            nodeport_addresses=["192.168.0.0/16"],
            masquerade_all=True,
            masquerade_bit=15,
            kubeconfig="/etc/kubernetes/kube-proxy.conf",
            qps=10.0,
            burst=20,
            conntrack_max_per_core=65536,
            conntrack_min=262144,
            conntrack_tcp_established_timeout=43200.0,
            conntrack_tcp_close_wait_timeout=1800.0,
            conntrack_tcp_be_liberal=True,
            conntrack_udp_timeout=30.0,
            conntrack_udp_stream_timeout=120.0,
            log_verbosity=2,
            log_format="json",
            sysctls=_with_table(
                {
                    "nf_conntrack_tcp_timeout_established": 43200,
                    "nf_conntrack_tcp_timeout_close_wait": 1800,
                    "nf_conntrack_udp_timeout": 30,
                    "nf_conntrack_udp_timeout_stream": 120,
                    "nf_conntrack_tcp_be_liberal": 1,
                },
                65536,
                262144,
            ),
        )
        assert "oomScoreAdj: ignored" in err

    def test_k3s_flags(self, capsys: pytest.CaptureFixture[str]) -> None:
        got, err = checked(capsys, *args_of("k3s.args"))
        assert got == expected(
            hostname_override="node-a",
            healthz_bind_address="127.0.0.1:10256",
            cluster_cidr=["10.42.0.0/16"],
            kubeconfig="/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig",
            conntrack_max_per_core=0,
            conntrack_tcp_established_timeout=0.0,
            conntrack_tcp_close_wait_timeout=0.0,
        )
        assert "--proxy-mode: 'iptables' ignored" in err

    def test_a_kubeadm_daemonset_command_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--config with flags beside it: the flags win; --v and gates are taken."""
        got, err = checked(capsys, *args_of("kubeadm-daemonset.args"))
        assert got == expected(
            config=str(KUBEADM),
            hostname_override="node-a",
            metrics_bind_address="0.0.0.0:10249",
            cluster_cidr=["10.244.0.0/16"],
            kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
            feature_gates={"NFTablesProxyMode": True},
            log_verbosity=2,
            sysctls=_with_table(CONNTRACK_DEFAULT, 32768, 131072),
        )
        assert err == ""  # nothing to warn about


class TestFlags:
    def test_every_kube_proxy_flag_is_accepted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Flags without a meaning here, one warning each."""
        ignored = [
            "--profiling",
            "--oom-score-adj=-999",
            "--ipvs-scheduler=rr",
            "--ipvs-strict-arp=true",
            "--ipvs-sync-period=30s",
            "--iptables-localhost-nodeports=false",
            "--windows-service",
            "--show-hidden-metrics-for-version=1.30",
            "--vmodule=x=2",
        ]
        _, err = checked(capsys, *ignored, "--proxy-mode=ipvs", "--feature-gates=Bogus=true")
        for flag in ignored:
            assert f"{flag.split('=')[0]}: ignored" in err
        assert "--proxy-mode: 'ipvs' ignored" in err
        assert "feature gate Bogus: unknown" in err

    def test_kube_proxy_spellings(self, capsys: pytest.CaptureFixture[str]) -> None:
        got = check(
            capsys,
            "-v=4",
            "--iptables-sync-period=45s",
            "--iptables-min-sync-period=0",
            "--masquerade-all",
            "--bind-address-hard-fail=false",
            "--kube-api-qps=20",
            "--kube-api-burst=40",
            "--bind-address=::",
            "--logging-format=json",
        )
        assert got["log_verbosity"] == 4 and got["log_format"] == "json"
        assert (got["sync_period"], got["min_sync_period"]) == (45.0, 0.0)
        assert got["masquerade_all"] is True and got["bind_address_hard_fail"] is False
        assert (got["qps"], got["burst"]) == (20.0, 40)
        assert (got["healthz_bind_address"], got["metrics_bind_address"]) == (
            "[::]:10256",
            "[::1]:10249",
        )

    def test_no_abbreviations(self, capsys: pytest.CaptureFixture[str]) -> None:
        got = check(capsys, "--bind-address=0.0.0.0")
        assert got["bind_address"] == "0.0.0.0" and got["bind_address_hard_fail"] is False
        with pytest.raises(SystemExit):
            main(["run", "--bind-addr=0.0.0.0", "--check-config"])
        assert "unrecognized arguments: --bind-addr" in capsys.readouterr().err

    def test_deprecated_ports(self, capsys: pytest.CaptureFixture[str]) -> None:
        got = check(capsys, "--healthz-port=12345", "--metrics-port=0")
        assert (got["healthz_bind_address"], got["metrics_bind_address"]) == ("0.0.0.0:12345", "")

    def test_an_explicit_flag_wins_over_the_file(self, capsys: pytest.CaptureFixture[str]) -> None:
        got = check(capsys, "--config", str(KUBEADM), "--sync-period=1m", "--kube-api-qps=50")
        assert (got["sync_period"], got["qps"]) == (60.0, 50.0)

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["run", "--version"]) == 0
        assert capsys.readouterr().out.startswith("nftproxy ")


BAD = [
    (["--sync-period", "0"], "nftproxy: --sync-period: must be greater than 0"),
    (["--healthz-bind-address=0.0.0.0:70000"], "--healthz-bind-address: '0.0.0.0:70000': port"),
    (["--metrics-bind-address=nonsense:1"], "--metrics-bind-address: 'nonsense:1': 'nonsense'"),
    (["--min-sync-period=-1s"], "--min-sync-period: must be greater than or equal to 0"),
    (["--conntrack-tcp-timeout-established=-5m"], "--conntrack-tcp-timeout-established: must"),
    (["--cluster-cidr=10.0.0.0/33"], "--cluster-cidr: '10.0.0.0/33' is not a valid CIDR"),
    (["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"], "--cluster-cidr: '10.0.0.0/8,10.1.0.0/16': one"),
    (["--iptables-masquerade-bit=32"], "--iptables-masquerade-bit: 32: must be within"),
    (["--min-sync-period=1m"], "default sync_period: must be greater than or equal"),
    (["--kube-api-burst=ten"], "--kube-api-burst: not a whole number"),
    (["--sync-period=soon"], "--sync-period: not a duration"),
    (["--proxy-mode=bogus"], "--proxy-mode: unknown proxy mode 'bogus'"),
    (["--logging-format=xml"], "--logging-format: 'xml': want one of text, json"),
    (["--hostname-override= "], "--hostname-override: an empty node name is invalid"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_invalid_values_are_one_line_naming_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *args, "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("nftables: {syncPeriod: -30s}", "nftables.syncPeriod: must be greater than 0"),
        ("healthzBindAddress: 1.2.3.4:70000", "healthzBindAddress: '1.2.3.4:70000': port"),
        ("clusterCIDR: 10.0.0.0/33", "clusterCIDR: '10.0.0.0/33' is not a valid CIDR"),
        ("conntrack: {maxPerCore: -1}", "conntrack.maxPerCore: must be greater than or equal"),
        ("mode: bogus", "mode: unknown proxy mode 'bogus'"),
        ("clientConnection: {qps: fast}", "clientConnection.qps: expected a number"),
    ],
)
def test_invalid_file_values_name_the_field(
    field: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.conf"
    cfg.write_text(
        f"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{field}\n"
    )
    assert main(["run", "--config", str(cfg), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err == f"nftproxy: {cfg}: {message}" + err.split(message, 1)[1], err
    assert err.count("\n") == 1


def test_write_config_to_reads_back_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write-config-to writes the effective settings as a KubeProxyConfiguration;
    run --config on it gives the same settings."""
    out = tmp_path / "written.conf"
    flags = ["--config", str(FIXTURES / "written.conf"), "--hostname-override=node-b"]
    assert main(["run", *flags, f"--write-config-to={out}"]) == 0
    before = check(capsys, *flags)
    after = check(capsys, "--config", str(out))
    assert {**after, "config": None} == {**before, "config": None}


@pytest.mark.parametrize(
    "seconds", [0.0, 0.25, 1.0, 1.5, 30.0, 60.0, 90.0, 900.0, 3600.0, 86400.0, 5400.5]
)
def test_durations_print_as_go_and_read_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "x") == seconds
