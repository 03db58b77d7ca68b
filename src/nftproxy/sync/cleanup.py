"""Removing nftproxy's tables, and (to take over a node) exactly what kube-proxy's
own ``--cleanup`` removes.

kube-proxy's leftovers, per its CleanupLeftovers (iptables, ipvs and nftables
modes): its ``kube-proxy`` nftables tables; its iptables chains, named below, and
the per-Service chains (``KUBE-SVC-``, ``KUBE-SVL-``, ``KUBE-EXT-``, ``KUBE-FW-``,
``KUBE-SEP-``) with every jump to them, in iptables-legacy and iptables-nft, IPv4
and IPv6; in ipvs mode its IPVS virtual servers, the ``kube-ipvs0`` interface and
its ipsets. Kubelet's chains (``KUBE-FIREWALL`` with the martian-packet drop that
guards 127.0.0.0/8 NodePorts, CVE-2020-8558; ``KUBE-KUBELET-CANARY``;
``KUBE-IPTABLES-HINT``) and anyone else's ``KUBE-*`` chain are never touched.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Iterator

from nftproxy import log
from nftproxy.nft.kernel import Kernel, in_netns
from nftproxy.nft.model import Family
from nftproxy.nft.render import render_transaction
from nftproxy.nft.transaction import DeleteTable, Transaction
from nftproxy.ruleset import names

KUBE_PROXY_TABLE = "kube-proxy"
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
KUBE_PROXY_CHAINS = {
    # iptables mode, then ipvs mode.
    "nat": {
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-PROXY-CANARY",
        "KUBE-NODE-PORT",
        "KUBE-LOAD-BALANCER",
    },
    "filter": {
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-CANARY",
        "KUBE-NODE-PORT",
        "KUBE-SOURCE-RANGES-FIREWALL",
        "KUBE-IPVS-FILTER",
        "KUBE-IPVS-OUT-FILTER",
    },
    "mangle": {"KUBE-PROXY-CANARY"},
}
IPVS_DEVICE = "kube-ipvs0"
IPVS_IPSETS = (
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
)
"""kube-proxy's ipvs mode's ipsets (pkg/proxy/ipvs/proxier.go ipsetInfo); the IPv6
ones carry ``KUBE-6-`` instead of ``KUBE-``."""
IPTABLES = tuple(
    f"{family}-{backend}" for backend in ("legacy", "nft") for family in ("iptables", "ip6tables")
)


TRACE_PREFIX = "nftproxy-trace-"
"""The names of the tables ``nftproxy trace`` marks packets with: cleanup removes
any left, and :mod:`nftproxy.diagnose.trace` (a layer above) names them so."""


def delete_tables(kernel: Kernel, table: str, *, dry_run: bool = False) -> list[str]:
    """Delete one table name in both families; returns what was there."""
    gone = []
    for family in Family:
        if table in kernel.tables(family):
            if not dry_run:
                kernel.run(render_transaction(Transaction(family, table, (DeleteTable(),))))
            gone.append(f"table {family.value} {table}")
    return gone


def _exec(cmd: list[str], netns: str | None, stdin: str | None = None) -> str:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    done = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def is_kube_proxy_chain(table: str, chain: str) -> bool:
    """Whether kube-proxy's --cleanup removes this chain of this iptables table."""
    if chain in KUBE_PROXY_CHAINS.get(table, ()):
        return True
    return table == "nat" and chain.startswith(SERVICE_CHAIN_PREFIXES)


def kube_chain_restore(save: str) -> tuple[str, list[str]]:
    """From ``iptables-save -t T`` output: a restore script removing kube-proxy's
    chains and every rule elsewhere that jumps to one; and the chains removed."""
    table_line = next((line for line in save.splitlines() if line.startswith("*")), None)
    if table_line is None:
        return "", []
    table = table_line[1:]
    owned = [
        line.split()[0][1:]
        for line in save.splitlines()
        if line.startswith(":") and is_kube_proxy_chain(table, line.split()[0][1:])
    ]
    if not owned:
        return "", []
    out = [table_line]
    out += [f":{c} - [0:0]" for c in owned]  # declaring a chain in a restore flushes it
    for line in save.splitlines():
        words = line.split()
        jumps = any(w in ("-j", "-g") and nxt in owned for w, nxt in itertools.pairwise(words))
        if words[:1] == ["-A"] and words[1] not in owned and jumps:
            out.append("-D " + line[3:])
    out += [f"-X {c}" for c in owned]
    out.append("COMMIT")
    return "\n".join(out) + "\n", owned


def delete_kube_proxy_iptables(netns: str | None, *, dry_run: bool = False) -> list[str]:
    """Remove kube-proxy's iptables chains and the jumps to them, in every backend."""
    gone = []
    for tool in IPTABLES:
        if shutil.which(f"{tool}-save") is None:
            continue
        for table in KUBE_PROXY_CHAINS:
            try:
                save = _exec([f"{tool}-save", "-t", table], netns)
            except RuntimeError:
                continue  # no such table in this backend: nothing of kube-proxy's there
            script, chains = kube_chain_restore(save)
            if script and not dry_run:
                _exec([f"{tool}-restore", "--noflush"], netns, stdin=script)
            gone += [f"{tool} {table} {c}" for c in chains]
    return gone


def _ipsets(netns: str | None) -> Iterator[str]:
    if shutil.which("ipset") is None:
        return
    try:
        listed = _exec(["ipset", "list", "-n"], netns).split()
    except RuntimeError:
        return
    ours = set(IPVS_IPSETS) | {"KUBE-6-" + n.removeprefix("KUBE-") for n in IPVS_IPSETS}
    yield from (n for n in listed if n in ours)


def delete_kube_proxy_ipsets(netns: str | None, *, dry_run: bool = False) -> list[str]:
    """Destroy kube-proxy's ipvs-mode ipsets (after the iptables rules that use them)."""
    gone = []
    for name in _ipsets(netns):
        if not dry_run:
            _exec(["ipset", "destroy", name], netns)
        gone.append(f"ipset {name}")
    return gone


def delete_kube_proxy_ipvs(netns: str | None, *, dry_run: bool = False) -> list[str]:
    """Flush IPVS (as kube-proxy's cleanup does) and delete its dummy interface."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - netlink only when asked

    gone = []
    with in_netns(netns):  # never pyroute2's netns=: it creates a missing namespace
        ipr = IPRoute()
    with ipr:
        links = ipr.link_lookup(ifname=IPVS_DEVICE)
        for index in links:
            if not dry_run:
                ipr.link("del", index=index)
            gone.append(f"interface {IPVS_DEVICE}")
    if not _has_ipvs(netns):
        return gone
    listing = _exec(["cat", "/proc/net/ip_vs"], netns).splitlines()
    servers = [line for line in listing if line.split()[:1] in (["TCP"], ["UDP"], ["SCTP"])]
    if servers and shutil.which("ipvsadm") is not None:
        if not dry_run:
            _exec(["ipvsadm", "--clear"], netns)
        gone.append(f"ipvs: {len(servers)} virtual servers")
    return gone


def _has_ipvs(netns: str | None) -> bool:
    try:
        _exec(["test", "-e", "/proc/net/ip_vs"], netns)
    except RuntimeError:
        return False
    return True


def cleanup(
    kernel: Kernel, *, kube_proxy: bool = False, netns: str | None = None, dry_run: bool = False
) -> list[str]:
    """Remove nftproxy's tables (and kube-proxy's leftovers with ``kube_proxy``);
    with ``dry_run`` only say what would go."""
    gone = delete_tables(kernel, names.TABLE, dry_run=dry_run)
    traces = {t for family in Family for t in kernel.tables(family) if t.startswith(TRACE_PREFIX)}
    for table in sorted(traces):  # tables of traces that were killed (nftproxy.diagnose.trace)
        gone += delete_tables(kernel, table, dry_run=dry_run)
    if kube_proxy:
        gone += delete_kube_proxy(kernel, netns, dry_run=dry_run)
    return gone


def delete_kube_proxy(kernel: Kernel, netns: str | None, *, dry_run: bool = False) -> list[str]:
    """Remove kube-proxy's leftovers, as its own ``--cleanup`` does (see the module's
    text); with ``dry_run`` only say what is there."""
    gone = delete_tables(kernel, KUBE_PROXY_TABLE, dry_run=dry_run)
    gone += delete_kube_proxy_iptables(netns, dry_run=dry_run)
    gone += delete_kube_proxy_ipvs(netns, dry_run=dry_run)
    gone += delete_kube_proxy_ipsets(netns, dry_run=dry_run)
    return gone


class TakeOver:
    """kube-proxy's rules on a node nftproxy takes over in place (kube-proxy's own
    DaemonSet running nftproxy's image): looked for and removed once the first sync
    has committed, so that no Service goes unserved in between (and a start that
    finds nothing, every restart of nftproxy's own, does not wait for the looking:
    iptables-save alone is ~0.2 s), exactly as :func:`delete_kube_proxy` removes
    them (kubelet's chains stay). A failure is logged, never fatal: the rules of
    both then apply side by side."""

    def __init__(self, kernel: Kernel, netns: str | None) -> None:
        self.kernel = kernel
        self.netns = netns
        self._log = log.logger()

    def after_first_sync(self) -> list[str]:
        """Remove whatever of kube-proxy's is there."""
        try:
            gone = delete_kube_proxy(self.kernel, self.netns)
        except Exception as err:
            self._log.error("kube-proxy's rules not removed", error=repr(err)[:300])
            return []
        if gone:
            self._log.info("kube-proxy's rules removed: nftproxy serves this node", removed=gone)
        return gone
