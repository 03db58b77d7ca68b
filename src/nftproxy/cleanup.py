"""Removing nftproxy's tables, and (to take over a node) kube-proxy's rules."""

from __future__ import annotations

import itertools
import subprocess

from nftproxy import names
from nftproxy.kernel import Kernel
from nftproxy.nft.model import Family

KUBE_PROXY_TABLE = "kube-proxy"
KUBE_CHAIN_PREFIX = "KUBE-"
IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("nat", "filter", "mangle")


def delete_tables(kernel: Kernel, table: str) -> list[str]:
    """Delete one table name in both families; returns what was there."""
    gone = []
    for family in Family:
        if table in kernel.tables(family):
            kernel.run(f"delete table {family.value} {table}\n")
            gone.append(f"table {family.value} {table}")
    return gone


def _exec(cmd: list[str], netns: str | None, stdin: str | None = None) -> str:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    done = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def kube_chain_restore(save: str) -> tuple[str, list[str]]:
    """From ``iptables-save -t T`` output: a restore script removing every KUBE-* chain
    and every rule elsewhere that jumps to one; and the chains removed."""
    table = next((line for line in save.splitlines() if line.startswith("*")), None)
    if table is None:
        return "", []
    kube = [
        line.split()[0][1:]
        for line in save.splitlines()
        if line.startswith(":" + KUBE_CHAIN_PREFIX)
    ]
    if not kube:
        return "", []
    out = [table]
    out += [f":{c} - [0:0]" for c in kube]  # declaring a chain in a restore flushes it
    for line in save.splitlines():
        words = line.split()
        jumps = any(w in ("-j", "-g") and nxt in kube for w, nxt in itertools.pairwise(words))
        if words[:1] == ["-A"] and not words[1].startswith(KUBE_CHAIN_PREFIX) and jumps:
            out.append("-D " + line[3:])
    out += [f"-X {c}" for c in kube]
    out.append("COMMIT")
    return "\n".join(out) + "\n", kube


def delete_kube_proxy_iptables(netns: str | None) -> list[str]:
    """Remove kube-proxy's iptables chains (KUBE-*) and the jumps to them."""
    gone = []
    for tool in IPTABLES:
        for table in IPTABLES_TABLES:
            try:
                save = _exec([f"{tool}-save", "-t", table], netns)
            except (RuntimeError, FileNotFoundError):
                continue  # no such table or tool: nothing of kube-proxy's there
            script, chains = kube_chain_restore(save)
            if script:
                _exec([f"{tool}-restore", "--noflush"], netns, stdin=script)
                gone += [f"{tool} {table} {c}" for c in chains]
    return gone


def cleanup(kernel: Kernel, *, kube_proxy: bool = False, netns: str | None = None) -> list[str]:
    """Remove nftproxy's tables (and kube-proxy's rules with ``kube_proxy``)."""
    gone = delete_tables(kernel, names.TABLE)
    if kube_proxy:
        gone += delete_tables(kernel, KUBE_PROXY_TABLE)
        gone += delete_kube_proxy_iptables(netns)
    return gone
