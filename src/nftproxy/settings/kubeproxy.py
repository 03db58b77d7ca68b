"""KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) files, read and written.

Read as kube-proxy reads them: a zero value is kube-proxy's "unset", so the
default applies (kubeadm serialises every field, ``syncPeriod: 0s`` and ``qps: 0``
included); a null pointer field (``masqueradeBit``, ``conntrack.maxPerCore``) is
unset, while its explicit 0 is a value. A field nftproxy honours becomes a setting
(:mod:`nftproxy.settings.model`); a field that changes nothing here (``ipvs``,
``oomScoreAdj``) is a warning when it is set; an unknown field is a warning, as
kube-proxy's lenient decoding of v1alpha1 makes it. Validation comes after, over
the merged settings (:mod:`nftproxy.settings.validate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nftproxy.settings.durations import format_duration, parse_duration
from nftproxy.settings.model import Settings
from nftproxy.settings.node import ConfigError, parse_bool

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
MODES = ("", "iptables", "ipvs", "nftables", "kernelspace")

Sourced = dict[str, tuple[Any, str]]
"""Setting name -> (value, the field it came from)."""

IGNORED = {
    "ipvs": "IPVS mode settings",
    "winkernel": "Windows settings",
    "windowsRunAsService": "Windows settings",
    "oomScoreAdj": "set it in the DaemonSet",
    "enableProfiling": "no profiling endpoint",
    "showHiddenMetricsForVersion": "no hidden metrics",
    "portRange": "unused by kube-proxy too",
    "udpIdleTimeout": "unused by kube-proxy too",
}
"""Fields that change nothing nftproxy does: a warning when set to anything but zero."""

TOP = {
    "apiVersion",
    "kind",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "mode",
    "clusterCIDR",
    "nodePortAddresses",
    "configSyncPeriod",
    "clientConnection",
    "conntrack",
    "detectLocalMode",
    "detectLocal",
    "iptables",
    "nftables",
    "featureGates",
    "logging",
    "hostPorts",  # nftproxy's own
    "serviceCounters",  # nftproxy's own
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
SECTIONS = {
    "clientConnection": {"kubeconfig", "qps", "burst", "contentType", "acceptContentTypes"},
    "conntrack": set(CONNTRACK),
    "detectLocal": {"bridgeInterface", "interfaceNamePrefix"},
    "iptables": {
        "masqueradeAll",
        "masqueradeBit",
        "minSyncPeriod",
        "syncPeriod",
        "localhostNodePorts",
    },
    "nftables": {"masqueradeAll", "masqueradeBit", "minSyncPeriod", "syncPeriod"},
    "logging": {"format", "verbosity", "flushFrequency", "vmodule", "options"},
}


def is_set(value: Any) -> bool:
    """Whether a value is anything but kube-proxy's zero (``""``, 0, false, null,
    ``0s``, or a section of zeros)."""
    if isinstance(value, Mapping):
        return any(is_set(v) for v in value.values())
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, str):
        return value.strip() not in ("", "0", "0s")
    return bool(value)


def load(path: Path) -> tuple[Sourced, list[str]]:
    """The settings a KubeProxyConfiguration file sets, and warnings for what it sets
    that nftproxy ignores."""
    import yaml  # noqa: PLC0415 - only when a config file is given

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(doc, Mapping) or doc.get("kind") != KIND:
        raise ConfigError(f"{path}: not a {KIND}")
    if doc.get("apiVersion") not in (None, API_VERSION):
        raise ConfigError(f"{path}: apiVersion: want {API_VERSION}, not {doc.get('apiVersion')!r}")
    reader = _Reader(doc, str(path))
    reader.read()
    return reader.out, reader.warnings


class _Reader:
    """One file's fields, read into settings."""

    def __init__(self, doc: Mapping[str, Any], path: str) -> None:
        self.doc = doc
        self.path = path
        self.out: Sourced = {}
        self.warnings: list[str] = []

    def section(self, key: str) -> Mapping[str, Any]:
        value = self.doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, "expected an object")
        return value

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {field}: {message}")

    def put(self, name: str, value: Any, field: str) -> None:
        self.out[name] = (value, f"{self.path}: {field}")

    def read(self) -> None:
        self._unknown()
        self._mode()
        for key, why in IGNORED.items():
            if is_set(self.doc.get(key)):
                self.warnings.append(f"{key}: ignored ({why})")
        self._strings()
        self._bools()
        self._periods()
        self._masquerade()
        self._client()
        self._conntrack()
        self._detect_local()
        self._feature_gates()
        self._logging()

    def _unknown(self) -> None:
        for key in sorted(set(self.doc) - TOP):
            self.warnings.append(f"{key}: unknown field, ignored")
        for key, known in SECTIONS.items():
            for sub in sorted(set(self.section(key)) - known):
                self.warnings.append(f"{key}.{sub}: unknown field, ignored")

    def _mode(self) -> None:
        mode = self.doc.get("mode") or ""
        if mode not in MODES:
            raise self.error("mode", f"unknown proxy mode {mode!r} (want one of {MODES[1:]})")
        if mode not in ("", "nftables"):
            self.warnings.append(f"mode: {mode!r} ignored; nftproxy programs nftables")

    def _strings(self) -> None:
        for key, name in (
            ("hostnameOverride", "hostname_override"),
            ("bindAddress", "bind_address"),
            ("healthzBindAddress", "healthz_bind_address"),
            ("metricsBindAddress", "metrics_bind_address"),
            ("detectLocalMode", "detect_local_mode"),
        ):
            value = self.doc.get(key)
            if is_set(value):
                self.put(name, str(value).strip(), key)
        cidrs = self.doc.get("clusterCIDR")
        if is_set(cidrs):
            self.put("cluster_cidr", _split(str(cidrs)), "clusterCIDR")
        addresses = self.doc.get("nodePortAddresses")
        if addresses is not None:
            if not isinstance(addresses, list):
                raise self.error("nodePortAddresses", "expected a list")
            self.put("nodeport_addresses", tuple(str(a) for a in addresses), "nodePortAddresses")
        period = self.doc.get("configSyncPeriod")
        if is_set(period):
            self.put(
                "config_sync_period", self.duration(period, "configSyncPeriod"), "configSyncPeriod"
            )

    def _bools(self) -> None:
        for key, name in (
            ("bindAddressHardFail", "bind_address_hard_fail"),
            ("hostPorts", "host_ports"),
            ("serviceCounters", "service_counters"),
        ):
            if self.doc.get(key) is not None:
                self.put(name, self.boolean(self.doc[key], key), key)

    def _mode_sections(self) -> list[str]:
        """The per-mode sections, the configured mode's first (kubeadm writes both)."""
        if self.doc.get("mode") == "nftables":
            return ["nftables", "iptables"]
        return ["iptables", "nftables"]

    def _periods(self) -> None:
        for key, name in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
            for section in self._mode_sections():
                value = self.section(section).get(key)
                if is_set(value):
                    self.put(name, self.duration(value, f"{section}.{key}"), f"{section}.{key}")
                    break

    def _masquerade(self) -> None:
        for section in self._mode_sections():
            values = self.section(section)
            field = f"{section}.masqueradeAll"
            if values.get("masqueradeAll") is not None and self.boolean(
                values["masqueradeAll"], field
            ):
                self.put("masquerade_all", True, field)
                break
        for section in self._mode_sections():
            bit = self.section(section).get("masqueradeBit")
            if bit is not None:
                self.put(
                    "masquerade_bit",
                    self.integer(bit, f"{section}.masqueradeBit"),
                    f"{section}.masqueradeBit",
                )
                break

    def _client(self) -> None:
        client = self.section("clientConnection")
        for key, name, kind in (
            ("kubeconfig", "kubeconfig", str),
            ("contentType", "content_type", str),
            ("qps", "qps", float),
            ("burst", "burst", int),
        ):
            value = client.get(key)
            if is_set(value):
                field = f"clientConnection.{key}"
                self.put(
                    name, str(value) if kind is str else self.number(value, field, kind), field
                )

    def _conntrack(self) -> None:
        for key, name in CONNTRACK.items():
            value = self.section("conntrack").get(key)
            if value is None:
                continue  # a null pointer: kube-proxy's default
            field = f"conntrack.{key}"
            if key.endswith("Timeout"):
                self.put(name, self.duration(value, field), field)
            elif key == "tcpBeLiberal":
                self.put(name, self.boolean(value, field), field)
            else:
                self.put(name, self.integer(value, field), field)

    def _detect_local(self) -> None:
        detect = self.section("detectLocal")
        for key, name in (
            ("bridgeInterface", "pod_bridge_interface"),
            ("interfaceNamePrefix", "pod_interface_name_prefix"),
        ):
            if is_set(detect.get(key)):
                self.put(name, str(detect[key]), f"detectLocal.{key}")

    def _feature_gates(self) -> None:
        gates = self.section("featureGates")
        if gates:
            pairs = tuple(
                (str(k), self.boolean(v, f"featureGates.{k}")) for k, v in sorted(gates.items())
            )
            self.put("feature_gates", pairs, "featureGates")

    def _logging(self) -> None:
        logging = self.section("logging")
        if is_set(logging.get("format")):
            self.put("log_format", str(logging["format"]), "logging.format")
        if logging.get("verbosity") is not None:
            self.put(
                "log_verbosity",
                self.integer(logging["verbosity"], "logging.verbosity"),
                "logging.verbosity",
            )

    def duration(self, value: Any, field: str) -> float:
        return float(self.convert(parse_duration, value, field))

    def boolean(self, value: Any, field: str) -> bool:
        return bool(self.convert(parse_bool, value, field))

    def integer(self, value: Any, field: str) -> int:
        return int(self.number(value, field, int))

    def number(self, value: Any, field: str, kind: Callable[[Any], Any]) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.error(field, f"expected a number, got {value!r}")
        try:
            number = kind(value)
        except ValueError:
            raise self.error(field, f"expected a number, got {value!r}") from None
        if kind is int and number != float(value):
            raise self.error(field, f"expected a whole number, got {value!r}")
        return number

    def convert(self, parse: Callable[[Any, str], Any], value: Any, field: str) -> Any:
        try:
            return parse(value, field)
        except ConfigError as err:
            raise ConfigError(f"{self.path}: {err}") from None


def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def document(settings: Settings) -> dict[str, Any]:
    """The KubeProxyConfiguration that gives these settings, every field written out
    (``--write-config-to``); reading it back gives the same settings."""
    periods = {
        "masqueradeAll": settings.masquerade_all,
        "masqueradeBit": settings.masquerade_bit,
        "minSyncPeriod": format_duration(settings.min_sync_period),
        "syncPeriod": format_duration(settings.sync_period),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": settings.bind_address,
        "bindAddressHardFail": settings.bind_address_hard_fail,
        "clientConnection": {
            "acceptContentTypes": "",
            "burst": settings.burst,
            "contentType": settings.content_type,
            "kubeconfig": settings.kubeconfig or "",
            "qps": settings.qps,
        },
        "clusterCIDR": ",".join(settings.cluster_cidr),
        "configSyncPeriod": format_duration(settings.config_sync_period),
        "conntrack": {
            "maxPerCore": settings.conntrack_max_per_core,
            "min": settings.conntrack_min,
            "tcpBeLiberal": settings.conntrack_tcp_be_liberal,
            "tcpCloseWaitTimeout": format_duration(settings.conntrack_tcp_close_wait_timeout),
            "tcpEstablishedTimeout": format_duration(settings.conntrack_tcp_established_timeout),
            "udpStreamTimeout": format_duration(settings.conntrack_udp_stream_timeout),
            "udpTimeout": format_duration(settings.conntrack_udp_timeout),
        },
        "detectLocal": {
            "bridgeInterface": settings.pod_bridge_interface or "",
            "interfaceNamePrefix": settings.pod_interface_name_prefix or "",
        },
        "detectLocalMode": settings.detect_local_mode,
        "featureGates": dict(settings.feature_gates),
        "healthzBindAddress": settings.healthz_bind_address,
        "hostPorts": settings.host_ports,
        "serviceCounters": settings.service_counters,
        "hostnameOverride": settings.hostname_override or "",
        "iptables": {**periods, "localhostNodePorts": None},
        "logging": {"format": settings.log_format, "verbosity": settings.log_verbosity},
        "metricsBindAddress": settings.metrics_bind_address,
        "mode": "nftables",
        "nftables": periods,
        "nodePortAddresses": list(settings.nodeport_addresses) or None,
    }
