"""Flags, then the KubeProxyConfiguration file, then kube-proxy's defaults; validated once.

As in kube-proxy, a zero in the file means the default (the file reader leaves it
out), while a flag is taken as given and validated as given: ``--sync-period 0`` is
refused, ``syncPeriod: 0s`` is 30 s. An explicit flag wins over the file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nftproxy.settings import kubeproxy, validate
from nftproxy.settings.model import DEFAULTS, HEALTHZ_PORT, METRICS_PORT, NAMES, Settings
from nftproxy.settings.node import ConfigError

Sourced = kubeproxy.Sourced

FEATURE_GATES = {
    "NFTablesProxyMode": True,
    "TopologyAwareHints": True,
    "ServiceTrafficDistribution": True,
    "PreferSameTrafficDistribution": True,
    "KubeProxyDrainingTerminatingNodes": True,
    "MultiCIDRServiceAllocator": True,
    "AllAlpha": False,
    "AllBeta": False,
}
"""kube-proxy's gates that touch what nftproxy does, and the value nftproxy always
behaves as (topology hints, trafficDistribution, draining nodes' healthz and
ServiceCIDRs are always on). Another value for one of these, or an unknown gate,
is a warning."""


def resolve(
    flags: Mapping[str, tuple[Any, str]], config: Path | None
) -> tuple[Settings, list[str]]:
    """The settings, and warnings for what was given but is ignored.

    ``flags`` maps a setting to the value an explicit flag gave and the flag's
    name; a failure raises :class:`ConfigError` naming the flag or the file's field.
    """
    values: Sourced = {}
    warnings: list[str] = []
    if config is not None:
        values, warnings = kubeproxy.load(config)
        values["config"] = (str(config), "--config")
    values.update(flags)
    unknown = set(values) - NAMES
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}")
    _addresses(values)
    if "hostname_override" in values:
        name, where = values["hostname_override"]
        values["hostname_override"] = (str(name).strip().lower(), where)
    merged = {name: getattr(DEFAULTS, name) for name in NAMES}
    merged.update({name: value for name, (value, _) in values.items()})
    _validate(merged, values)
    warnings += gate_warnings(dict(merged["feature_gates"]))
    return Settings(**merged), warnings


def _addresses(values: Sourced) -> None:
    """The healthz and metrics addresses: the bind address's family chooses the
    defaults (``0.0.0.0`` and ``127.0.0.1``, or ``[::]`` and ``[::1]``); an address
    without a port gets the default port (kube-proxy's AppendPortIfNeeded)."""
    bind, _ = values.get("bind_address", (DEFAULTS.bind_address, ""))
    six = validate.ip(bind) is None and ipaddress.ip_address(str(bind)).version == 6
    for name, host, port in (
        ("healthz_bind_address", "[::]" if six else "0.0.0.0", HEALTHZ_PORT),
        ("metrics_bind_address", "[::1]" if six else "127.0.0.1", METRICS_PORT),
    ):
        if name not in values:
            values[name] = (f"{host}:{port}", "default")
            continue
        value, where = values[name]
        values[name] = (with_port(str(value), port), where)


def with_port(address: str, port: int) -> str:
    """address with port appended when it is a bare IP (``[...]`` around IPv6)."""
    if not address or validate.ip(address.strip("[]")) is not None:
        return address
    bare = address.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def _validate(merged: dict[str, Any], values: Sourced) -> None:
    """Every rule, then the relations; the first failure is raised, naming where the
    value came from."""

    def fail(name: str, message: str) -> ConfigError:
        where = values[name][1] if name in values else f"default {name}"
        return ConfigError(f"{where}: {message}")

    for name, rule in validate.RULES.items():
        wrong = rule(merged[name])
        if wrong:
            raise fail(name, wrong)
    for name, wrong in validate.relations(merged):
        raise fail(name, wrong)


def gate_warnings(gates: Mapping[str, bool]) -> list[str]:
    """A warning per gate nftproxy does not follow."""
    out = []
    for gate, value in sorted(gates.items()):
        if gate not in FEATURE_GATES:
            out.append(f"feature gate {gate}: unknown to nftproxy, ignored")
        elif value != FEATURE_GATES[gate]:
            out.append(
                f"feature gate {gate}={str(value).lower()}: ignored, nftproxy behaves as "
                f"{str(FEATURE_GATES[gate]).lower()}"
            )
    return out
