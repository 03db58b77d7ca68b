"""The host's own addresses, read over netlink with pyroute2 (imported when read:
it costs about 0.3 s, and a node given by its flags never needs it)."""

from __future__ import annotations

import ipaddress
import socket

from nftproxy.k8s.objects import IPAddress
from nftproxy.nft.kernel import require_netns

SCOPE_UNIVERSE = 0


def node_ips(netns: str | None = None) -> tuple[IPAddress, ...]:
    """The node's global addresses; per family, the default route's interface first."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - 0.3 s, only when the host is read

    if netns:
        require_netns(netns)
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        default_ifs = {
            r.get_attr("RTA_OIF")
            for fam in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_default_routes(family=fam)
        }
        addrs = [
            (a["index"] not in default_ifs, ipaddress.ip_address(a.get_attr("IFA_ADDRESS")))
            for a in ipr.get_addr()
            if a["scope"] == SCOPE_UNIVERSE
        ]
    return tuple(ip for _, ip in sorted(addrs, key=lambda t: t[0]))


def hostname() -> str:
    """The node name kube-proxy would use without --hostname-override."""
    return socket.gethostname().lower()
