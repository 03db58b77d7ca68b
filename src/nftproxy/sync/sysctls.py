"""The conntrack sysctls kube-proxy sets at start (``conntrack.*`` of its config).

Defaults are kube-proxy's: ``maxPerCore`` 32768 with ``min`` 131072 (the table
size is the larger of maxPerCore x CPUs and min; 0 leaves it), TCP established
entries kept 24 h, CLOSE_WAIT ones 1 h; UDP timeouts and ``tcpBeLiberal`` only
when set. The table size is global to the machine (only the first network
namespace may set it); the timeouts are per network namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from nftproxy import log
from nftproxy.nft.kernel import in_netns
from nftproxy.settings import Settings

ROOT = Path("/proc/sys/net/netfilter")
TIMEOUTS = {
    "conntrack_tcp_established_timeout": "nf_conntrack_tcp_timeout_established",
    "conntrack_tcp_close_wait_timeout": "nf_conntrack_tcp_timeout_close_wait",
    "conntrack_udp_timeout": "nf_conntrack_udp_timeout",
    "conntrack_udp_stream_timeout": "nf_conntrack_udp_timeout_stream",
}


def wanted(settings: Settings) -> dict[str, int]:
    """sysctl name (under net/netfilter) -> value, from the settings."""
    out: dict[str, int] = {}
    per_core = settings.conntrack_max_per_core
    if per_core > 0:
        out["nf_conntrack_max"] = max(per_core * (os.cpu_count() or 1), settings.conntrack_min)
    for opt, name in TIMEOUTS.items():
        seconds = float(getattr(settings, opt))
        if seconds > 0:
            out[name] = int(seconds)
    if settings.conntrack_tcp_be_liberal:
        out["nf_conntrack_tcp_be_liberal"] = 1
    return out


READ_ONLY_HERE = frozenset({"nf_conntrack_max"})
"""What a network namespace other than the host's holds read-only: not a failure."""


def fatal(failed: list[str]) -> list[str]:
    """The sysctls among failed whose failure ``run --init-only`` reports (exit 1)."""
    return [name for name in failed if name not in READ_ONLY_HERE]


def apply(values: dict[str, int], netns: str | None = None) -> list[str]:
    """Write the sysctls that differ (inside netns), as kube-proxy does; returns what
    could not be written, each logged (a read-only table size in a network
    namespace is expected, and a read-only /proc/sys in an unprivileged container)."""
    failed = []
    with in_netns(netns):
        for name, value in values.items():
            path = ROOT / name
            try:
                now = int(path.read_text())
                if now == value or (name == "nf_conntrack_max" and now >= value):
                    continue  # set already (by an init container); the table is never lowered
                path.write_text(f"{value}\n")
            except OSError as err:
                failed.append(name)
                log.logger().warning(
                    "sysctl not set", sysctl=f"net.netfilter.{name}", value=value, error=str(err)
                )
    return failed
