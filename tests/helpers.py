"""Small builders of API objects for the unit tests."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nftproxy.k8s.manifests import Loaded, load_objects
from nftproxy.lab.netns import in_ns
from nftproxy.nft.model import Table
from nftproxy.proxy.state import ProxyState, compute_state
from nftproxy.settings.node import NodeConfig

NODE_FLAGS = [
    "--hostname-override",
    "node-a",
    "--node-ip",
    "192.168.0.2",
    "--cluster-cidr",
    "10.0.0.0/8",
    "--service-cidr",
    "172.30.0.0/16",
]
"""The command-line flags of a node like NODE (with its primary address only)."""

NODE = NodeConfig(
    name="node-a",
    ips=(
        ipaddress.ip_address("192.168.0.2"),
        ipaddress.ip_address("192.168.1.2"),
        ipaddress.ip_address("2001:db8::2"),
    ),
    cluster_cidrs=(ipaddress.ip_network("10.0.0.0/8"),),
    service_cidrs=(ipaddress.ip_network("172.30.0.0/16"),),
)


def service(name: str = "svc", ns: str = "ns", **spec: Any) -> dict[str, Any]:
    """A Service manifest; spec keys override a one-port ClusterIP default."""
    status = spec.pop("status", None)
    labels = spec.pop("labels", None)
    body: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": "172.30.0.10",
        "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
    }
    body.update(spec)
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }
    if labels:
        doc["metadata"]["labels"] = labels
    if status:
        doc["status"] = status
    return doc


def service_ips(netns: str) -> str:
    """nftproxy's ``service-ips`` map as nft lists it in netns ("" with no table)."""
    try:
        return in_ns(netns, "nft", "list", "map", "ip", "nftproxy", "service-ips")
    except RuntimeError:  # no table yet
        return ""


def serve(api: Any, name: str, cluster_ip: str, addr: str) -> None:
    """A one-port Service and its slice with one ready endpoint, into the lab's API
    server (api)."""
    api.apply(service(name, clusterIP=cluster_ip))
    api.apply(slice_(name, endpoint(addr)))


def endpoint(addr: str, node: str | None = None, **conditions: bool) -> dict[str, Any]:
    """One slice endpoint (conditions default to ready)."""
    ep: dict[str, Any] = {"addresses": [addr], "conditions": conditions or {"ready": True}}
    if node:
        ep["nodeName"] = node
    return ep


def slice_(
    service_name: str = "svc",
    *endpoints: dict[str, Any],
    ns: str = "ns",
    ports: list[dict[str, Any]] | None = None,
    family: str = "IPv4",
    name: str | None = None,
) -> dict[str, Any]:
    """An EndpointSlice for a Service."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": family,
        "endpoints": list(endpoints),
        "ports": ports if ports is not None else [{"name": "p", "port": 8080, "protocol": "TCP"}],
    }


def host_port_pod(
    name: str = "web", ns: str = "ns", pod_ip: str = "10.0.0.5", host_port: int = 8080
) -> dict[str, Any]:
    """A running Pod on node-a whose container port 80 is published as host_port."""
    ports = [{"containerPort": 80, "hostPort": host_port}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": pod_ip},
    }


def state_of(*docs: dict[str, Any], node: NodeConfig = NODE) -> ProxyState:
    """Parse docs and compute the proxy state."""
    loaded = Loaded()
    load_objects(iter(docs), "test", loaded)
    assert not [p for p in loaded.problems if not p.note], loaded.problems
    return compute_state(loaded.objects, node)


def comparable(t: Table | None) -> Table | None:
    """A table with its elements in key order (the kernel's dump order is its own)."""
    if t is None:
        return None
    sets = tuple(replace(s, elements=tuple(sorted(s.elements))) for s in t.sets)
    return replace(t, sets=sets)


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll check until it holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def self_signed(folder: Path, address: str = "127.0.0.1") -> tuple[str, str]:
    """A certificate for address (its own CA) and its key, made by openssl."""
    cert, key = folder / "apiserver.crt", folder / "apiserver.key"
    names = ["-subj", "/CN=kube-apiserver", "-addext", f"subjectAltName=IP:{address}"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *names, *files],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


# kubelet's iptables chains (never removed) and kube-proxy's (removed by
# `cleanup --kube-proxy` and by `run` taking a node over), for iptables-restore.
KUBELET_RULES = """*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL {localnet} -m comment --comment "block incoming localnet connections" {ct} -j DROP
COMMIT
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-MARK-DROP - [0:0]
COMMIT
"""
LOCALNET = {"4": "! -s 127.0.0.0/8 -d 127.0.0.0/8", "6": "! -s ::1/128 -d ::1/128"}


IPV4_BACKENDS = ("iptables-nft", "iptables-legacy")


def iptables_saved(netns: str) -> str:
    """iptables-save of both IPv4 backends in netns."""
    return "".join(in_ns(netns, f"{tool}-save") for tool in IPV4_BACKENDS)


def node_rules(tool: str) -> str:
    """kubelet's and kube-proxy's chains for iptables-restore (tool names the
    family); kubelet's martian-packet drop guards only the loopback addresses."""
    localnet = LOCALNET["6" if tool.startswith("ip6") else "4"]
    ct = "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
    return KUBELET_RULES.format(localnet=localnet, ct=ct) + KUBE_PROXY_RULES


KUBE_PROXY_RULES = """*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-CUSTOM - [0:0]
-A INPUT -m conntrack --ctstate NEW -j KUBE-PROXY-FIREWALL
-A INPUT -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES
-A FORWARD -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
-A INPUT -j KUBE-CUSTOM
COMMIT
*mangle
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-EXT-ABCDEFGHIJKLMNOP - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-SERVICES -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-ABCDEFGHIJKLMNOP
-A KUBE-SEP-ABCDEFGHIJKLMNOP -j KUBE-MARK-MASQ
COMMIT
"""
KUBE_PROXY_CHAIN_COUNT = 6 + 1 + 7  # filter, mangle, nat
BACKENDS = ("iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft")
