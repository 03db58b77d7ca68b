"""Names of nftproxy's tables, chains and sets.

Fixed names are constants. Names of per-Service objects carry a short hash and
``namespace/name/protocol/port`` (as kube-proxy's nftables mode does), so a
reader sees which Service an object serves and the hash keeps similar names
apart. nft names may hold ``[A-Za-z0-9_./-]``; Kubernetes names never hold
``/``, so it separates the parts.
"""

from __future__ import annotations

import base64
import hashlib

TABLE = "nftproxy"
NAME_MAX = 240

MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT = "reject-chain"
SERVICES = "services"
ENDPOINTS_CHECK = "endpoints-check"
FIREWALL_CHECK = "firewall-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"

SERVICE_IPS = "service-ips"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
BACKENDS = "backends"
LOCAL_BACKENDS = "local-backends"
CLUSTER_IPS = "cluster-ips"
POD_CIDRS = "pod-cidrs"
FIREWALL_IPS = "firewall-ips"
FIREWALL_ALLOW = "firewall-allow"
HAIRPIN = "hairpin"
APPLIED = "applied"


def hashed(name: str) -> str:
    """``HASH-name``: an 8-character base32 hash of name, then name, cut to fit."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    full = f"{digest[:8]}-{name}"
    return full if len(full) <= NAME_MAX else full[: NAME_MAX - 3] + "..."


def endpoint_label(addr: str, port: int) -> str:
    """``ADDR/PORT`` with an IPv6 address's colons turned into dots (nft names forbid ':')."""
    return f"{addr.replace(':', '.')}/{port}"
