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
import re

from nftproxy.nft.render import COMMENT_MAX

TABLE = "nftproxy"
NAME_MAX = 240
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")

MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT = "reject-chain"
SERVICES = "services"
ENDPOINTS_CHECK = "endpoints-check"
FIREWALL_CHECK = "firewall-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"

SERVICE_IPS = "service-ips"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
SERVICE_COUNTERS = "service-counters"
BACKENDS = "backends"
LOCAL_BACKENDS = "local-backends"
CLUSTER_IPS = "cluster-ips"
POD_CIDRS = "pod-cidrs"
FIREWALL_IPS = "firewall-ips"
FIREWALL_ALLOW = "firewall-allow"
HAIRPIN = "hairpin"
APPLIED = "applied"


def hashed(name: str, prefix: str = "") -> str:
    """``[prefix]HASH-name``: an 8-character base32 hash of name, then name, cut to fit.

    Without a prefix the result may begin with a digit, which nft does not read as
    a name: callers put it after a word (``sticky-``, ``affinity-``)."""
    full = f"{prefix}{_digest(name)[:8]}-{name}"
    return full if len(full) <= NAME_MAX else full[: NAME_MAX - 3] + "..."


def _digest(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


SHORTENED = 9
"""``~`` and the 8-character hash that end a comment :func:`comment` shortened."""


def comment(text: str) -> str:
    """text as a comment nft accepts: unsafe characters replaced by ``?``; when too
    long, the longest ``/``-separated parts are cut alike (every part of
    ``namespace/name/protocol/port`` stays readable), then ``~`` and an 8-character
    hash of the whole text (two long names that share a beginning still differ)."""
    safe = _UNSAFE.sub("?", text)
    if len(safe) <= COMMENT_MAX:
        return safe
    parts = safe.split("/")
    budget = COMMENT_MAX - SHORTENED - (len(parts) - 1)
    while sum(map(len, parts)) > budget:
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        parts[longest] = parts[longest][:-1]
    return f"{'/'.join(parts)}~{_digest(text)[: SHORTENED - 1]}"


def comment_parts(text: str) -> tuple[list[str], bool]:
    """The ``/``-separated parts of a comment :func:`comment` wrote, and whether it
    was shortened (each part then is the start of the original's)."""
    shortened = len(text) > SHORTENED and text[-SHORTENED] == "~"
    return (text[:-SHORTENED] if shortened else text).split("/"), shortened


def endpoint_id(addr: str, port: int) -> int:
    """A 31-bit number for an endpoint, the same on every sync and every node: the
    affinity sets record a client with the id of its endpoint. (31 bits: nft
    prints a numgen offset as a signed number.)

    Two endpoints of one Service port share an id with odds of about n^2 / 2^32
    (6e-7 for 50 endpoints); a client recorded at one of them then sticks to the
    one whose rule comes first, which is still one of the Service's endpoints."""
    digest = hashlib.blake2b(f"{addr} {port}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF
