"""A synthetic cluster for the benchmarks: N Services with M endpoints each."""

from __future__ import annotations

import ipaddress
from typing import Any

NODE_NAME = "node-a"
NODE_IP = "192.168.0.2"
NODE_FLAGS = [
    "--hostname-override",
    NODE_NAME,
    "--node-ip",
    NODE_IP,
    "--cluster-cidr",
    "10.0.0.0/8",
    "--service-cidr",
    "172.16.0.0/12",
]


def _ip(base: str, offset: int) -> str:
    return str(ipaddress.ip_address(base) + offset)


def service(i: int, endpoints: int, protocol: str = "TCP") -> list[dict[str, Any]]:
    """Service i and its slice. Every 10th is a LoadBalancer (every 20th with source
    ranges), 2 in 10 are NodePorts, every 20th has ClientIP affinity, every 10th uses
    externalTrafficPolicy Local."""
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIP": _ip("172.16.0.1", i),
        "ports": [{"name": "http", "port": 80, "protocol": protocol}],
    }
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}"},
        "spec": spec,
    }
    external = i % 10 in (0, 1, 2)
    if external:
        spec["type"] = "LoadBalancer" if i % 10 == 0 else "NodePort"
        spec["ports"][0]["nodePort"] = 1024 + i  # unique per Service, like a real allocator
        if i % 10 == 0:
            doc["status"] = {"loadBalancer": {"ingress": [{"ip": _ip("100.64.0.1", i)}]}}
            if i % 20 == 0:
                spec["loadBalancerSourceRanges"] = ["203.0.113.0/24"]
        if i % 10 == 1:
            spec["externalTrafficPolicy"] = "Local"
    if i % 20 == 5:
        spec["sessionAffinity"] = "ClientIP"
    eps = [
        {
            "addresses": [_ip("10.128.0.0", i * endpoints + j)],
            "conditions": {"ready": True},
            "nodeName": NODE_NAME if j == 0 else f"node-{j}",
        }
        for j in range(endpoints)
    ]
    eslice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc-{i}-abc",
            "namespace": f"ns-{i % 50}",
            "labels": {"kubernetes.io/service-name": f"svc-{i}"},
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": protocol}],
    }
    return [doc, eslice]


def cluster(services: int, endpoints: int, protocol: str = "TCP") -> dict[str, Any]:
    """The whole cluster as one ``kind: List`` (what ``kubectl get -o json`` prints)."""
    items = [obj for i in range(services) for obj in service(i, endpoints, protocol)]
    return {"apiVersion": "v1", "kind": "List", "items": items}
