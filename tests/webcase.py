"""The Service most kernel sync tests apply: web (TCP 80 with NodePort 30080, UDP 53)
on a node with one address, with endpoints chosen from three."""

from __future__ import annotations

import ipaddress
from typing import Any

from helpers import endpoint, service, slice_

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.nft.model import Ruleset
from nftproxy.proxy.state import compute_state
from nftproxy.ruleset.build import build
from nftproxy.settings.node import NodeConfig, parse_cidrs

NODE = NodeConfig(
    "node-a",
    (ipaddress.ip_address("192.168.0.2"),),
    parse_cidrs("10.0.0.0/8"),
    parse_cidrs("172.30.0.0/16"),
)
CLIENT, EXTERNAL = "10.0.0.2", "203.0.113.2"
EPS = ("10.1.0.1", "10.1.0.2", "10.1.0.3")
PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
    {"name": "dns", "port": 53, "protocol": "UDP"},
]
SLICE_PORTS = [
    {"name": "http", "port": 80, "protocol": "TCP"},
    {"name": "dns", "port": 53, "protocol": "UDP"},
]


def ruleset(*docs: dict[str, Any]) -> Ruleset:
    loaded = Loaded()
    load_objects(iter(docs), "test", loaded)
    return build(compute_state(loaded.objects, NODE))


def web(*eps: str, **spec: Any) -> list[dict[str, Any]]:
    """Service web (TCP 80 with NodePort 30080, UDP 53) with endpoints eps."""
    spec.setdefault("type", "NodePort")
    return [
        service("web", ports=PORTS, **spec),
        slice_(
            "web",
            *[endpoint(e, node="node-a" if e == EPS[0] else "other") for e in eps],
            ports=SLICE_PORTS,
        ),
    ]
