"""The one typed, frozen ``Settings`` every command runs with, and kube-proxy's defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

HEALTHZ_PORT = 10256
METRICS_PORT = 10249
DETECT_LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Settings:
    """What the flags, then the KubeProxyConfiguration file, then kube-proxy's
    defaults say, validated (:func:`nftproxy.settings.resolve`). Durations are in
    seconds. ``run --check-config`` prints exactly this."""

    config: str | None = None
    """The KubeProxyConfiguration file read, if any."""
    hostname_override: str | None = None
    """The node's name (default: the hostname)."""
    node_ips: tuple[str, ...] = ()
    """nftproxy's ``--node-ip``: the node's addresses (default: the Node's, then the host's)."""
    bind_address: str = "0.0.0.0"
    """Its family chooses the default healthz and metrics addresses."""
    healthz_bind_address: str = f"0.0.0.0:{HEALTHZ_PORT}"
    """``/healthz`` and ``/livez`` (``""``: none)."""
    metrics_bind_address: str = f"127.0.0.1:{METRICS_PORT}"
    """``/metrics`` (``""``: none)."""
    bind_address_hard_fail: bool = False
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    drift_check_period: float = 60.0
    """nftproxy's: how often the kernel is read back and repaired (0: never)."""
    config_sync_period: float = 900.0
    """kube-proxy's informer resync; nftproxy's watches relist on 410 only."""
    cluster_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()
    nodeport_addresses: tuple[str, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    detect_local_mode: str = "ClusterCIDR"
    pod_bridge_interface: str | None = None
    pod_interface_name_prefix: str | None = None
    host_ports: bool = True
    """nftproxy's: program Pods' hostPorts (off when the CNI portmap plugin does)."""
    service_counters: bool = True
    """nftproxy's: count each Service port's new and rejected connections in the kernel."""
    kubeconfig: str | None = None
    master: str | None = None
    qps: float = 5.0
    """Requests per second to the API server (negative: no limit, as client-go)."""
    burst: int = 10
    content_type: str = "application/vnd.kubernetes.protobuf"
    """Recorded only: nftproxy's client speaks JSON."""
    conntrack_max_per_core: int = 32768
    conntrack_min: int = 131072
    conntrack_tcp_established_timeout: float = 86400.0
    conntrack_tcp_close_wait_timeout: float = 3600.0
    conntrack_tcp_be_liberal: bool = False
    conntrack_udp_timeout: float = 0.0
    conntrack_udp_stream_timeout: float = 0.0
    feature_gates: tuple[tuple[str, bool], ...] = ()
    log_verbosity: int = 0
    log_format: str = "text"

    @property
    def pod_interface(self) -> str | None:
        """The interface pods' traffic comes in on, with the interface detectors: a
        bridge's name, or a prefix and ``*`` (None with ClusterCIDR and NodeCIDR)."""
        if self.detect_local_mode == "BridgeInterface":
            return self.pod_bridge_interface
        if self.detect_local_mode == "InterfaceNamePrefix":
            return f"{self.pod_interface_name_prefix}*"
        return None

    def as_dict(self) -> dict[str, Any]:
        """Every setting, and the pod interface it implies, for ``--check-config``."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["feature_gates"] = dict(self.feature_gates)
        out["pod_interface"] = self.pod_interface
        return out


DEFAULTS = Settings()
NAMES = frozenset(f.name for f in fields(Settings))
