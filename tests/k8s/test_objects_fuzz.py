"""Any value in any field of an object: it is parsed or reported, never a crash.

The parsers read JSON, where any field may hold anything. Part of them is
compiled (setup.py), and compiled code checks its declared types at run time: a
value that slipped past a check would raise a TypeError there that plain Python
lets through. Either way, ``load_objects`` must turn every object into a parsed
object or a problem that names it.
"""

from __future__ import annotations

import copy
from typing import Any

from helpers import endpoint, service, slice_
from hypothesis import given, settings
from hypothesis import strategies as st

from nftproxy.k8s.manifests import Loaded, load_objects

FULL_SERVICE = service(
    type="LoadBalancer",
    clusterIPs=["172.30.0.10", "fd00::10"],
    externalIPs=["192.0.2.1"],
    ports=[{"name": "p", "port": 80, "protocol": "UDP", "nodePort": 30080}],
    sessionAffinity="ClientIP",
    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
    externalTrafficPolicy="Local",
    internalTrafficPolicy="Local",
    healthCheckNodePort=30999,
    loadBalancerSourceRanges=["203.0.113.0/24"],
    labels={"service.kubernetes.io/service-proxy-name": "other"},
    status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1", "ipMode": "VIP"}]}},
)
HINTED = endpoint("10.0.0.1", "node-a", ready=True, serving=True, terminating=False)
HINTED["hints"] = {"forZones": [{"name": "z"}], "forNodes": [{"name": "node-a"}]}
FULL_SLICE = slice_("svc", HINTED, ports=[{"name": "p", "port": 8080, "protocol": "SCTP"}])
FULL_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {
        "nodeName": "node-a",
        "containers": [
            {"name": "c", "ports": [{"name": "dns", "containerPort": 53, "hostPort": 53}]}
        ],
    },
    "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}]},
}
FULL_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z"}},
    "spec": {"podCIDRs": ["10.0.0.0/24"]},
    "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.2"}]},
}
FULL_SERVICE_CIDR = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "kubernetes"},
    "spec": {"cidrs": ["172.30.0.0/16"]},
}
DOCS = [FULL_SERVICE, FULL_SLICE, FULL_POD, FULL_NODE, FULL_SERVICE_CIDR]

Path = tuple[str | int, ...]


def _paths(value: Any, at: Path = ()) -> list[Path]:
    """Every field of a document, inner ones included (not the document itself)."""
    out = [at] if at else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*at, i))
    return out


def _replaced(doc: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    parent: Any = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return out


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["", "None", "10.0.0.1", "fd00::1", "TCP", "Local", "ClientIP", "a-b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """One of the full documents with one field (at any depth) set to any JSON value."""
    doc = draw(st.sampled_from(DOCS))
    path = draw(st.sampled_from(_paths(doc)))
    return _replaced(doc, path, draw(json_values))


def test_the_full_documents_parse() -> None:
    """The mutations start from objects that are valid whole."""
    loaded = Loaded()
    load_objects(iter(copy.deepcopy(DOCS)), "f", loaded)
    assert not [p for p in loaded.problems if not p.note]
    assert len(loaded.objects) == 3 and len(loaded.nodes) == 1 and loaded.service_cidrs


@settings(max_examples=600, deadline=None)
@given(doc=mutated())
def test_any_value_in_any_field_is_parsed_or_reported(doc: dict[str, Any]) -> None:
    """Whatever the value, load_objects returns: an exception other than an invalid
    object's would stop the sync that reads it."""
    load_objects(iter([doc]), "f", Loaded())
