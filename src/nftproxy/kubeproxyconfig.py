"""KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1), as kubeadm's ConfigMap holds it.

Every field of the type is known here. A field nftproxy honours becomes a
setting under the name of its command-line option; a field whose value cannot
be honoured (``mode: ipvs``, ``detectLocalMode: Bogus``) is an error
that names it; a field that is safe to ignore (``ipvs``, ``oomScoreAdj``) is a
warning that names it. An unknown field is an error, as kube-proxy's strict
decoding makes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nftproxy.config import ConfigError, parse_bool

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")

# Fields that change nothing nftproxy does: ignored with a warning when set.
IGNORED = {
    "featureGates": "feature gates of kube-proxy",
    "bindAddress": "node IPs come from the Node object, then the host",
    "enableProfiling": "no profiling endpoint",
    "showHiddenMetricsForVersion": "no hidden metrics",
    "ipvs": "IPVS mode settings",
    "winkernel": "Windows settings",
    "windowsRunAsService": "Windows settings",
    "oomScoreAdj": "set it in the DaemonSet",
    "configSyncPeriod": "informers relist on 410 only",
    "portRange": "deprecated, unused by kube-proxy too",
    "logging": "logs are structlog JSON or text (--log-json)",
}
KNOWN = {
    "apiVersion",
    "kind",
    "clientConnection",
    "hostnameOverride",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "mode",
    "iptables",
    "nftables",
    "detectLocalMode",
    "detectLocal",
    "clusterCIDR",
    "nodePortAddresses",
    "conntrack",
    "hostPorts",  # nftproxy's own
    *IGNORED,
}
CONNTRACK = {
    "maxPerCore": "conntrack_max_per_core",
    "min": "conntrack_min",
    "tcpEstablishedTimeout": "conntrack_tcp_established_timeout",
    "tcpCloseWaitTimeout": "conntrack_tcp_close_wait_timeout",
    "tcpBeLiberal": "conntrack_tcp_be_liberal",
    "udpTimeout": "conntrack_udp_timeout",
    "udpStreamTimeout": "conntrack_udp_stream_timeout",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, what: str) -> float:
    """A Go duration (``30s``, ``1m0s``, ``500ms``, ``0``) in seconds."""
    text = str(value).strip()
    if text in ("0", ""):
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{what}: not a duration: {value!r} (e.g. 30s, 1m0s, 500ms)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected an object")
    return value


def load(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The settings a KubeProxyConfiguration file sets, and warnings for fields ignored.

    Settings are keyed by the command-line option's name (``min_sync_period``).
    """
    import yaml  # noqa: PLC0415 - only when a config file is given

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(doc, Mapping) or doc.get("kind") != "KubeProxyConfiguration":
        raise ConfigError(f"{path}: not a KubeProxyConfiguration")
    try:
        return _settings(doc)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _settings(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    unknown = sorted(set(doc) - KNOWN)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}")
    if doc.get("apiVersion") not in (None, API_VERSION):
        raise ConfigError(f"apiVersion: want {API_VERSION}, not {doc.get('apiVersion')!r}")
    warnings = [f"{k}: ignored ({why})" for k, why in IGNORED.items() if doc.get(k)]
    out: dict[str, Any] = {}
    mode = doc.get("mode") or "nftables"
    if mode != "nftables":
        raise ConfigError(f"mode: nftproxy is an nftables proxy; {mode!r} is not supported")
    simple = {
        "hostnameOverride": "hostname_override",
        "clusterCIDR": "cluster_cidr",
        "nodePortAddresses": "nodeport_addresses",
        "healthzBindAddress": "healthz_bind_address",
        "metricsBindAddress": "metrics_bind_address",
    }
    out.update({opt: doc[k] for k, opt in simple.items() if doc.get(k)})
    if doc.get("bindAddressHardFail") is not None:
        out["bind_address_hard_fail"] = parse_bool(
            doc["bindAddressHardFail"], "bindAddressHardFail"
        )
    if doc.get("hostPorts") is not None:
        out["host_ports"] = parse_bool(doc["hostPorts"], "hostPorts")
    _modes(doc, out)
    _periods(doc, out)
    _client(doc, out, warnings)
    for key, opt in CONNTRACK.items():
        value = _section(doc, "conntrack").get(key)
        if value is None:
            continue
        if key.endswith("Timeout"):
            out[opt] = parse_duration(value, f"conntrack.{key}")
        elif key == "tcpBeLiberal":
            out[opt] = parse_bool(value, f"conntrack.{key}")
        else:
            out[opt] = int(value)
    unknown_ct = sorted(set(_section(doc, "conntrack")) - set(CONNTRACK))
    if unknown_ct:
        raise ConfigError(f"unknown field 'conntrack.{unknown_ct[0]}'")
    return out, warnings


def _modes(doc: Mapping[str, Any], out: dict[str, Any]) -> None:
    mode = doc.get("detectLocalMode") or ""
    if mode and mode not in DETECT_LOCAL_MODES:
        raise ConfigError(f"detectLocalMode: unknown mode {mode!r}")
    if mode:
        out["detect_local_mode"] = mode
    detect = _section(doc, "detectLocal")
    unknown = sorted(set(detect) - {"bridgeInterface", "interfaceNamePrefix"})
    if unknown:
        raise ConfigError(f"unknown field 'detectLocal.{unknown[0]}'")
    if detect.get("bridgeInterface"):
        out["pod_bridge_interface"] = str(detect["bridgeInterface"])
    if detect.get("interfaceNamePrefix"):
        out["pod_interface_name_prefix"] = str(detect["interfaceNamePrefix"])
    for section in (_section(doc, "nftables"), _section(doc, "iptables")):
        if section.get("masqueradeAll") is not None:
            out.setdefault("masquerade_all", parse_bool(section["masqueradeAll"], "masqueradeAll"))
        if section.get("masqueradeBit") is not None:
            bit = int(section["masqueradeBit"])
            if not 0 <= bit <= 31:
                raise ConfigError(f"masqueradeBit: {bit} is not in 0..31")
            out.setdefault("masquerade_bit", bit)


def _periods(doc: Mapping[str, Any], out: dict[str, Any]) -> None:
    for section in (_section(doc, "nftables"), _section(doc, "iptables")):
        for key, opt in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
            if section.get(key) is not None:
                out.setdefault(opt, parse_duration(section[key], key))
    if out.get("sync_period") == 0:
        raise ConfigError("syncPeriod: must be greater than 0")


def _client(doc: Mapping[str, Any], out: dict[str, Any], warnings: list[str]) -> None:
    client = _section(doc, "clientConnection")
    if client.get("kubeconfig"):
        out["kubeconfig"] = client["kubeconfig"]
    if client.get("qps") is not None:
        out["qps"] = float(client["qps"])
    if client.get("burst") is not None:
        out["burst"] = int(client["burst"])
    ctype = client.get("contentType")
    if ctype and ctype != "application/json":
        warnings.append(f"clientConnection.contentType: {ctype} ignored; JSON is used")
    if client.get("acceptContentTypes"):
        warnings.append("clientConnection.acceptContentTypes: ignored; JSON is used")
