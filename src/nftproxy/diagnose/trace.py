"""``nftproxy trace``: the path real packets take through nftproxy's chains, as the
kernel reports it.

A short-lived table of its own (``nftproxy-trace-<lease>-<random>``) marks the first packet
of each matching connection for nftables tracing (``meta nftrace set 1``) in
prerouting and output, after conntrack and before nftproxy's chains;
``nft monitor trace`` reports each marked packet's walk through every table.
The table is removed when the trace ends, on Ctrl-C, SIGTERM, SIGHUP and on
errors. Its name holds a lease (when the trace's timeout and a minute are over,
in Unix seconds): one left by a process that was killed is removed by the next
trace once its lease has run out, whatever PID namespace either ran in, and
``nftproxy cleanup`` removes every one. Each traced packet is
printed with the rules of nftproxy's tables it met, their verdicts, the Service
whose entry it hit and the endpoint it was sent to.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nftproxy.nft.kernel import Kernel, netns_command
from nftproxy.nft.model import (
    BaseHook,
    Chain,
    ChainType,
    Family,
    Field,
    Hook,
    Match,
    Rule,
    Ruleset,
    Table,
    TraceOn,
)
from nftproxy.nft.render import render_script
from nftproxy.ruleset import names
from nftproxy.sync.cleanup import TRACE_PREFIX

PREFIX = TRACE_PREFIX
LEASE = re.compile(PREFIX + r"(\d+)-[0-9a-f]+")
LEASE_MARGIN = 60
"""Seconds a trace table outlives its trace's timeout before another may remove it."""
PRIORITY = -150  # after conntrack (-200), before nftproxy's filters (-110) and DNAT (-100)
_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet|rule|verdict|policy):? ?(.*)$")
_VERDICT = re.compile(r"\(verdict ([^)]*)\)\s*$")


@dataclass(frozen=True)
class Connection:
    """What to trace: a source, a destination, optionally a port and protocol."""

    src: str
    dst: str
    port: int | None = None
    proto: str | None = None

    @property
    def family(self) -> Family:
        return Family.IP6 if ":" in self.dst else Family.IP


@dataclass
class Step:
    """One rule of nftproxy's table the packet met, and its verdict."""

    chain: str
    rule: str
    verdict: str
    service: str | None = None


@dataclass
class Traced:
    """One packet's walk."""

    id: str
    packet: str = ""
    steps: list[Step] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    verdict: str = "accept"

    def as_json(self) -> dict[str, object]:
        """The walk as plain data."""
        return {
            "id": self.id,
            "packet": self.packet,
            "steps": [s.__dict__ for s in self.steps],
            "service": next((s.service for s in self.steps if s.service), None),
            "endpoint": None
            if self.endpoint is None
            else {"ip": self.endpoint[0], "port": self.endpoint[1]},
            "verdict": self.verdict,
        }


def marker(conn: Connection, name: str) -> Table:
    """The table that marks the connection's packets for tracing."""
    match = [
        Match((Field.CT_STATE,), "new"),  # a connection's first packet (and its retries)
        Match((Field.SADDR,), conn.src),
        Match((Field.DADDR,), conn.dst),
    ]
    if conn.proto:
        match.append(Match((Field.L4PROTO,), conn.proto))
    if conn.port is not None:
        match.append(Match((Field.DPORT,), str(conn.port)))
    rule = Rule((*match, TraceOn()))
    chains = tuple(
        Chain(f"mark-{hook.value}", (rule,), base=BaseHook(ChainType.FILTER, hook, PRIORITY))
        for hook in (Hook.PREROUTING, Hook.OUTPUT)
    )
    return Table(conn.family, name, chains, comment="nftproxy trace (removed when it ends)")


def remove_stale(kernel: Kernel, now: float | None = None) -> list[str]:
    """Remove the trace tables whose lease has run out; their names."""
    gone = []
    now = time.time() if now is None else now
    for family in (Family.IP, Family.IP6):
        for table in sorted(kernel.tables(family)):
            if not table.startswith(PREFIX):
                continue
            if lease_of(table) < now:
                kernel.run(f"delete table {family.value} {table}\n")
                gone.append(f"{family.value} {table}")
    return gone


def lease_of(table: str) -> float:
    """When a trace table's lease runs out (0: none, as a table named before leases)."""
    found = LEASE.fullmatch(table)
    return float(found.group(1)) if found else 0.0


@contextlib.contextmanager
def marking(kernel: Kernel, conn: Connection, timeout: float = 10.0) -> Iterator[str]:
    """The marker table in place for the block; always removed after it."""
    remove_stale(kernel)
    until = int(time.time() + timeout + LEASE_MARGIN)
    name = f"{PREFIX}{until}-{secrets.token_hex(3)}"
    kernel.run(render_script(Ruleset((marker(conn, name),)), name))
    try:
        yield name
    finally:
        kernel.run(f"delete table {conn.family.value} {name}\n")


def monitor(netns: str | None) -> subprocess.Popen[bytes]:
    """``nft monitor trace`` in the namespace, its lines on stdout."""
    return subprocess.Popen(
        netns_command(netns, "nft", "monitor", "trace"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def collect(
    proc: subprocess.Popen[bytes], count: int, timeout: float, quiet: float = 0.5
) -> list[str]:
    """Trace lines until ``count`` packets were seen and none came for ``quiet``
    seconds, or until ``timeout``. The pipe is read unbuffered: a line waiting in a
    reader's buffer would not wake ``select``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    lines: list[str] = []
    ids: set[str] = set()
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline:
        if len(ids) >= count and time.monotonic() - last >= quiet:
            break
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            lines.append(line)
            found = _LINE.match(line)
            if found:
                ids.add(found.group(1))
        last = time.monotonic()
    return lines


def parse(lines: list[str], ours: Table | None, table: str = names.TABLE) -> list[Traced]:
    """The walks in the monitor's lines, with nftproxy's rules and what they did."""
    walks: dict[str, Traced] = {}
    first: dict[str, tuple[str, int]] = {}
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        tid, _family, tname, chain, kind, rest = m.groups()
        walk = walks.setdefault(tid, Traced(tid))
        if kind == "packet":
            _packet(walk, first, rest)
        elif kind == "rule" and tname == table:
            _rule(walk, first.get(tid), chain, rest, ours)
    for walk in walks.values():
        if walk.endpoint is not None and walk.verdict == "accept":
            walk.verdict = "dnat"
    return list(walks.values())


def _packet(walk: Traced, first: dict[str, tuple[str, int]], rest: str) -> None:
    """A packet line: the first gives the destination; a later one with another
    destination shows where DNAT sent it."""
    addr, port = _destination(rest)
    if not walk.packet:
        walk.packet = _summary(rest)
        if addr:
            first[walk.id] = (addr, port)
    elif addr and walk.id in first and (addr, port) != first[walk.id]:
        walk.endpoint = (addr, port)


def _rule(
    walk: Traced, dst: tuple[str, int] | None, chain: str, rest: str, ours: Table | None
) -> None:
    found = _VERDICT.search(rest)
    verdict = found.group(1) if found else ""
    text = _VERDICT.sub("", rest).strip()
    step = Step(chain, text, verdict)
    if "vmap @" + names.SERVICE_IPS in text and dst is not None:
        step.service = _service(ours, walk.packet, dst)
    walk.steps.append(step)
    if "reject" in text:
        walk.verdict = "reject"
    elif verdict == "drop":
        walk.verdict = "drop"


def _summary(packet: str) -> str:
    """``proto src:port -> dst:port`` of a trace's packet line."""
    src = re.search(r"\bip6? saddr (\S+)", packet)
    sport = re.search(r"\b(tcp|udp|sctp) sport (\d+)", packet)
    addr, port = _destination(packet)
    if src is None or not addr:
        return packet.strip()
    proto = sport.group(1) if sport else ""
    left = f"{src.group(1)}:{sport.group(2)}" if sport else src.group(1)
    return f"{proto} {left} -> {addr}:{port}".strip()


def _destination(packet: str) -> tuple[str, int]:
    addr = re.search(r"\bip6? daddr (\S+)", packet)
    port = re.search(r"\b(?:tcp|udp|sctp) dport (\d+)", packet)
    return (addr.group(1) if addr else "", int(port.group(1)) if port else 0)


def _service(ours: Table | None, packet: str, dst: tuple[str, int]) -> str | None:
    """The Service comment of the entry the packet's destination hits."""
    if ours is None:
        return None
    key = (dst[0], packet.split(" ", 1)[0], str(dst[1]))  # packet: the summary
    entries = next((s for s in ours.sets if s.name == names.SERVICE_IPS), None)
    if entries is None:
        return None
    return next((e.comment for e in entries.elements if e.key == key), None)


def describe(walks: list[Traced]) -> str:
    """The text answer: each packet, its steps in nftproxy's chains, where it went."""
    out = []
    for w in walks:
        out.append(f"trace {w.id}: {w.packet}")
        for s in w.steps:
            service = f"  [{s.service}]" if s.service else ""
            out.append(f"  {s.chain:<24} {s.rule}  -> {s.verdict or 'continue'}{service}")
        where = f"DNAT to {w.endpoint[0]} port {w.endpoint[1]}" if w.endpoint else w.verdict
        out.append(f"  => {where}")
    return "\n".join(out) + ("\n" if out else "no packet matched\n")


SUBSCRIBE_WAIT = 0.3
"""How long ``nft monitor`` is given to subscribe before packets are expected."""


def run_trace(
    kernel: Kernel,
    netns: str | None,
    conn: Connection,
    *,
    count: int = 1,
    timeout: float = 10.0,
    on_ready: Callable[[], object] = lambda: None,
) -> list[Traced]:
    """Trace up to ``count`` packets of conn (``on_ready`` runs once the kernel
    reports them)."""
    ours = kernel.read_table(conn.family, names.TABLE)
    with marking(kernel, conn, timeout):
        proc = monitor(netns)
        try:
            time.sleep(SUBSCRIBE_WAIT)
            on_ready()
            lines = collect(proc, count, timeout)
        finally:
            proc.terminate()
            proc.wait()
    return parse(lines, ours)
