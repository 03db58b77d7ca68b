"""Hypothesis strategies for objects a Kubernetes API server accepts: Services,
EndpointSlices and Pods with names of every legal length and alphabet, every
Service type and traffic policy, IPv4, IPv6 and dual-stack, several ports and slices."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

LOWER = "abcdefghijklmnopqrstuvwxyz"
ALNUM = LOWER + "0123456789"
NODES = ("node-a", "node-b")
ZONES = ("zone-a", "zone-b")
"""The node under test (node-a) and another one."""

Doc = dict[str, Any]


@st.composite
def dns_label(draw: st.DrawFn, *, first: str = ALNUM, max_size: int = 63) -> str:
    """A DNS-1123 label (or a DNS-1035 one with ``first=LOWER``), short or maximal."""
    size = draw(st.one_of(st.integers(1, 8), st.integers(1, max_size), st.just(max_size)))
    if size == 1:
        return draw(st.sampled_from(first if first == LOWER else ALNUM))
    head = draw(st.sampled_from(first))
    middle = draw(st.text(ALNUM + "-", min_size=size - 2, max_size=size - 2))
    return head + middle + draw(st.sampled_from(ALNUM))


@st.composite
def dns_subdomain(draw: st.DrawFn) -> str:
    """A DNS-1123 subdomain up to 253 characters."""
    labels = draw(st.lists(dns_label(), min_size=1, max_size=5))
    return ".".join(labels)[:253].strip(".-") or "a"


def _valid_subdomain(name: str) -> str:
    """name (at most 253 characters) with every dot-separated part made a valid label."""
    parts = [p.strip("-") or "x" for p in name[:253].strip(".").split(".")]
    return ".".join(parts)


def ipv4() -> st.SearchStrategy[str]:
    """An IPv4 address of the ranges a cluster uses (no 0.0.0.0 or broadcast)."""
    return st.integers(0x0A000001, 0x0AFFFFFE).map(lambda n: str(ipaddress.IPv4Address(n)))


def ipv6() -> st.SearchStrategy[str]:
    """An IPv6 address in fd00::/16."""
    low = int(ipaddress.IPv6Address("fd00::1"))
    return st.integers(low, low + 2**64).map(lambda n: str(ipaddress.IPv6Address(n)))


def addresses(family: str) -> st.SearchStrategy[str]:
    return ipv4() if family == "IPv4" else ipv6()


PROTOCOLS = st.sampled_from(["TCP", "UDP", "SCTP"])


@st.composite
def service_ports(draw: st.DrawFn, node_ports: bool) -> list[Doc]:
    names = draw(st.lists(dns_label(), min_size=1, max_size=3, unique=True))
    unnamed = len(names) == 1 and draw(st.booleans())
    ports = []
    for name in names:
        port: Doc = {"port": draw(st.integers(1, 65535)), "protocol": draw(PROTOCOLS)}
        if not unnamed:
            port["name"] = name
        if node_ports:
            port["nodePort"] = draw(st.integers(30000, 32767))
        ports.append(port)
    return ports


@st.composite
def services(draw: st.DrawFn) -> Doc:
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    families = draw(st.sampled_from([["IPv4"], ["IPv6"], ["IPv4", "IPv6"], ["IPv6", "IPv4"]]))
    spec: Doc = {
        "type": kind,
        "ipFamilies": families,
        "clusterIPs": [draw(addresses(f)) for f in families],
        "ports": draw(service_ports(kind != "ClusterIP")),
    }
    spec["clusterIP"] = spec["clusterIPs"][0]
    if draw(st.booleans()):
        spec["externalIPs"] = draw(st.lists(addresses(families[0]), max_size=2, unique=True))
    if kind != "ClusterIP" and draw(st.booleans()):
        spec["externalTrafficPolicy"] = "Local"
        spec["healthCheckNodePort"] = draw(st.integers(30000, 32767))
    if draw(st.booleans()):
        spec["internalTrafficPolicy"] = "Local"
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        timeout = draw(st.one_of(st.none(), st.integers(1, 86400)))
        if timeout is not None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    doc: Doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": draw(dns_label(first=LOWER)), "namespace": draw(dns_label())},
        "spec": spec,
    }
    if kind == "LoadBalancer":
        ingress = [{"ip": draw(addresses(f))} for f in families]
        doc["status"] = {"loadBalancer": {"ingress": ingress}}
        if draw(st.booleans()):
            prefix = 24 if families[0] == "IPv4" else 64
            spec["loadBalancerSourceRanges"] = [
                _network(f"{draw(addresses(families[0]))}/{prefix}")
            ]
    return doc


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


@st.composite
def slices_for(draw: st.DrawFn, svc: Doc) -> list[Doc]:
    """0 to 2 EndpointSlices of a Service, in its families, for some of its ports."""
    meta, spec = svc["metadata"], svc["spec"]
    out = []
    for i in range(draw(st.integers(0, 2))):
        family = draw(st.sampled_from(spec["ipFamilies"]))
        endpoints = []
        for _ in range(draw(st.integers(0, 4))):
            ep: Doc = {
                "addresses": [draw(addresses(family))],
                "conditions": {
                    "ready": draw(st.booleans()),
                    "serving": draw(st.booleans()),
                    "terminating": draw(st.booleans()),
                },
            }
            node = draw(st.sampled_from((*NODES, None)))
            if node:
                ep["nodeName"] = node
            hints = {
                key: [{"name": n} for n in names]
                for key, names in (
                    ("forZones", draw(st.sets(st.sampled_from(ZONES), max_size=2))),
                    ("forNodes", draw(st.sets(st.sampled_from(NODES), max_size=2))),
                )
                if names
            }
            if hints:
                ep["hints"] = hints
            endpoints.append(ep)
        ports = [
            {
                "name": p.get("name", ""),
                "port": draw(st.integers(1, 65535)),
                "protocol": p["protocol"],
            }
            for p in spec["ports"]
            if draw(st.booleans())
        ]
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": _valid_subdomain(f"{meta['name']}-{i}.{draw(dns_subdomain())}"),
                    "namespace": meta["namespace"],
                    "labels": {"kubernetes.io/service-name": meta["name"]},
                },
                "addressType": family,
                "endpoints": endpoints,
                "ports": ports,
            }
        )
    return out


@st.composite
def pods(draw: st.DrawFn) -> Doc:
    """A Running Pod on this node with hostPorts."""
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    ports = [
        {
            "containerPort": draw(st.integers(1, 65535)),
            "hostPort": draw(st.integers(1, 65535)),
            "protocol": draw(PROTOCOLS),
        }
        for _ in range(draw(st.integers(1, 2)))
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": _valid_subdomain(draw(dns_subdomain())),
            "namespace": draw(dns_label()),
        },
        "spec": {"nodeName": NODES[0], "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": [{"ip": draw(addresses(family))}]},
    }


@st.composite
def clusters(draw: st.DrawFn) -> list[Doc]:
    """Services with their slices, and a few hostPort Pods."""
    docs: list[Doc] = []
    for svc in draw(st.lists(services(), min_size=1, max_size=4)):
        docs.append(svc)
        docs += draw(slices_for(svc))
    docs += draw(st.lists(pods(), max_size=2))
    return docs
