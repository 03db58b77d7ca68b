"""Network namespaces for the lab: one node, one namespace per other address.

Topology::

    host 10.0.0.2 ──veth──┐
    host 10.180.0.1 ─veth─┤  node (holds the node IPs on lo,
    ...                   ├─ forwards, runs the ruleset under test)
    sink ─────────veth────┘  (default route; rejects with host-prohibited)

Every node-side veth carries LINK4/LINK6, so a masqueraded connection reaches an
endpoint from exactly that address. Anything that leaves the node towards an
address nobody holds ends in the sink, which answers "host prohibited": such a
packet is told apart from one our rules dropped (no answer) or rejected
("port unreachable").
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nftproxy.k8s.objects import IPAddress
from nftproxy.sync import checkpoint

LINK4 = ipaddress.ip_address("100.64.0.1")
LINK6 = ipaddress.ip_address("fd00:64::1")
SINK4 = "100.64.0.2"
SINK6 = "fd00:64::2"
SINK_RULES = """table inet sink {
    chain forward { type filter hook forward priority 0; policy accept;
        meta l4proto != { icmp, ipv6-icmp } reject with icmpx admin-prohibited
    }
}
"""

_counter = itertools.count()


def ip(*args: str) -> None:
    """Run one ``ip`` command."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def in_ns(ns: str, *cmd: str, stdin: str | None = None) -> str:
    """Run a command inside a namespace and return its output."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {ns} failed: {done.stderr.strip()}")
    return done.stdout


def _plen(addr: IPAddress) -> str:
    return f"{addr}/{addr.max_prefixlen}"


def _addr_args(addr: IPAddress) -> list[str]:
    return [_plen(addr), "nodad"] if addr.version == 6 else [_plen(addr)]


LAB_FOLDER = "nftproxy-lab-"
"""The start of a lab's work folder's name, before the creating process's id."""


class Lab:
    """A node namespace and hosts around it; removes everything on exit, also on error."""

    def __init__(self, tag: str = "lab") -> None:
        self.prefix = f"np{os.getpid()}-{next(_counter)}-{tag}"[:40]
        self.node = f"{self.prefix}-node"
        self.namespaces: list[str] = []
        self.hosts: dict[IPAddress, str] = {}
        self.procs: list[subprocess.Popen[str]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{LAB_FOLDER}{os.getpid()}-"))
        self._veths = itertools.count()

    def __enter__(self) -> Lab:
        try:
            self._make_node()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop responders, delete every namespace this lab made (and the checkpoint
        ``apply`` or ``run`` kept of it by default) and its work folder."""
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", ns)
            checkpoint.remove(checkpoint.default_path(ns))
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _netns(self, name: str) -> str:
        ip("netns", "add", name)
        self.namespaces.append(name)
        # No duplicate address detection: addresses are usable at once.
        for conf in ("all", "default"):
            in_ns(name, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def _make_node(self) -> None:
        self._netns(self.node)
        sink = self._netns(f"{self.prefix}-sink")
        for ns in (self.node, sink):
            for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
                in_ns(ns, "sysctl", "-qw", f"{key}=1")
        veth = self._veth(sink)
        for link, other, fam in ((SINK4, str(LINK4), "-4"), (SINK6, str(LINK6), "-6")):
            addr = ipaddress.ip_address(link)
            ip("-n", sink, "addr", "add", *_addr_args(addr), "dev", "eth0")
            ip("-n", sink, fam, "route", "add", other, "dev", "eth0")
            ip("-n", sink, fam, "route", "add", "default", "via", other, "dev", "eth0")
            ip("-n", self.node, fam, "route", "add", link, "dev", veth)
            ip("-n", self.node, fam, "route", "add", "default", "via", link, "dev", veth)
        in_ns(sink, "nft", "-f", "-", stdin=SINK_RULES)

    def _veth(self, ns: str, prefix: str = "v") -> str:
        """A veth from the node to ns (eth0 there), with the link addresses on the node
        side; its node-side name is prefix and a number."""
        name = f"{prefix}{next(self._veths)}"
        ip(
            "-n",
            self.node,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        for addr in (LINK4, LINK6):
            ip("-n", self.node, "addr", "add", *_addr_args(addr), "dev", name)
        ip("-n", self.node, "link", "set", name, "up")
        ip("-n", ns, "link", "set", "eth0", "up")
        return name

    def add_node_ip(self, addr: IPAddress) -> None:
        """Give the node one more local address."""
        ip("-n", self.node, "addr", "add", *_addr_args(addr), "dev", "lo")

    def add_host(self, addr: IPAddress, veth_prefix: str = "v") -> str:
        """A namespace holding addr, routed through the node (over a veth named
        ``veth_prefix`` and a number on the node's side); returns its name."""
        if addr in self.hosts:
            return self.hosts[addr]
        ns = self._netns(f"{self.prefix}-h{len(self.hosts)}")
        veth = self._veth(ns, veth_prefix)
        ip("-n", ns, "addr", "add", *_addr_args(addr), "dev", "eth0")
        fam = f"-{addr.version}"
        link = str(LINK4 if addr.version == 4 else LINK6)
        ip("-n", ns, fam, "route", "add", link, "dev", "eth0")
        ip("-n", ns, fam, "route", "add", "default", "via", link, "dev", "eth0")
        ip("-n", self.node, fam, "route", "add", _plen(addr), "dev", veth)
        self.hosts[addr] = ns
        return ns

    def start_responders(self, ports: list[int]) -> None:
        """A responder on every port in the node and in every host."""
        started = []
        for ns in [self.node, *self.hosts.values()]:
            proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-m",
                    "nftproxy.lab.responder",
                    ns,
                    str(self.sctp_log),
                    *map(str, sorted(set(ports))),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("responder failed to start")

    @property
    def sctp_log(self) -> Path:
        """Where responders record the SCTP INITs they saw."""
        return self.workdir / "sctp.log"

    def load(self, script: str) -> None:
        """Load an nft script into the node."""
        in_ns(self.node, "nft", "-f", "-", stdin=script)

    def owner(self, ns: str) -> str:
        """What a responder name stands for: node, or the host address."""
        if ns == self.node:
            return "node"
        return next(str(a) for a, n in self.hosts.items() if n == ns)


def list_lab_namespaces() -> Iterator[str]:
    """Namespaces this process's labs created and did not remove (for leak checks)."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    mine = f"np{os.getpid()}-"
    for line in out.splitlines():
        if line.startswith(mine):
            yield line.split()[0]
