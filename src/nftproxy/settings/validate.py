"""Validation of the merged settings, rule by rule as kube-proxy's ``validation.go``.

Each rule reads one setting and names, on failure, where its value came from (the
flag, or the config file's field), in one line."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from nftproxy.settings.model import DETECT_LOCAL_MODES, LOG_FORMATS
from nftproxy.settings.node import ALL, PRIMARY

Check = Callable[[Any], str | None]
"""A rule: None when the value is valid, else what is wrong."""


def host_port(value: Any) -> str | None:
    """``IP:port`` (``[IPv6]:port``), port 1-65535; ``""`` turns the server off."""
    if value == "":
        return None
    host, sep, port = str(value).rpartition(":")
    if not sep:
        return f"{value!r}: must be IP:port"
    if host.startswith("["):
        if not host.endswith("]"):
            return f"{value!r}: must be IP:port"
        host = host[1:-1]
    if ip(host) is not None:
        return f"{value!r}: {host!r} is not a valid IP"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{value!r}: port must be in 1-65535"
    return None


def ip(value: Any) -> str | None:
    """A textual IP address."""
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return f"{value!r} is not a valid IP address"
    return None


def cidrs(value: tuple[str, ...]) -> str | None:
    """CIDR blocks."""
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not a valid CIDR block (e.g. 10.100.0.0/16 or fd00::/48)"
    return None


def cluster_cidrs(value: tuple[str, ...]) -> str | None:
    """One CIDR, or a dual-stack pair (as kube-proxy)."""
    wrong = cidrs(value)
    if wrong or len(value) < 2:
        return wrong
    versions = {ipaddress.ip_network(t, strict=False).version for t in value}
    if len(value) > 2 or versions != {4, 6}:
        return f"{','.join(value)!r}: one CIDR, or one IPv4 and one IPv6 (dual-stack)"
    return None


def nodeport_addresses(value: tuple[str, ...]) -> str | None:
    """CIDR blocks, or the words ``primary`` and ``all``."""
    return cidrs(tuple(v for v in value if v not in (PRIMARY, ALL)))


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be greater than or equal to 0"


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"{value!r}: want one of {', '.join(choices)}"

    return check


def masquerade_bit(value: int) -> str | None:
    return None if 0 <= value <= 31 else f"{value}: must be within the range [0, 31]"


def hostname(value: str | None) -> str | None:
    return None if value is None or value.strip() else "an empty node name is invalid"


RULES: dict[str, Check] = {
    "hostname_override": hostname,
    "node_ips": lambda v: next((e for e in map(ip, v) if e), None),
    "bind_address": ip,
    "healthz_bind_address": host_port,
    "metrics_bind_address": host_port,
    "sync_period": positive,
    "min_sync_period": not_negative,
    "drift_check_period": not_negative,
    "config_sync_period": positive,
    "cluster_cidr": cluster_cidrs,
    "service_cidr": cidrs,
    "nodeport_addresses": nodeport_addresses,
    "masquerade_bit": masquerade_bit,
    "detect_local_mode": one_of(DETECT_LOCAL_MODES),
    "qps": lambda v: None,  # client-go's: 0 is its default, negative is no limit
    "burst": not_negative,
    "conntrack_max_per_core": not_negative,
    "conntrack_min": not_negative,
    "conntrack_tcp_established_timeout": not_negative,
    "conntrack_tcp_close_wait_timeout": not_negative,
    "conntrack_udp_timeout": not_negative,
    "conntrack_udp_stream_timeout": not_negative,
    "log_format": one_of(LOG_FORMATS),
    "log_verbosity": not_negative,
}
"""Each setting's own rule."""


def relations(values: dict[str, Any]) -> list[tuple[str, str]]:
    """What settings must satisfy together: (the setting to name, what is wrong)."""
    out = []
    if values["min_sync_period"] > values["sync_period"]:
        out.append(("sync_period", "must be greater than or equal to the min sync period"))
    mode = values["detect_local_mode"]
    if mode == "BridgeInterface" and not values["pod_bridge_interface"]:
        out.append(("detect_local_mode", "BridgeInterface needs --pod-bridge-interface"))
    if mode == "InterfaceNamePrefix" and not values["pod_interface_name_prefix"]:
        out.append(("detect_local_mode", "InterfaceNamePrefix needs --pod-interface-name-prefix"))
    return out
