"""The one seam to the kernel: run nft text through libnftables; read tables back.

Changes go through libnftables (nft syntax, one atomic transaction each).
Reading goes over netlink (:mod:`nftproxy.nft.read`): nft's own listing costs
about 12 microseconds per set element in user space, 1.2 s for 10,000 Services
before it prints anything. nft's JSON listing stays available as a second
opinion (``diff --reader nft``). Everything above this module is pure and tested
without root; this module is tested with root in network namespaces. Errors from
libnftables are mapped to typed errors in one function, :func:`classify`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import orjson

from nftproxy.nft.conntrack import StalePlan, delete_stale
from nftproxy.nft.errors import NetlinkError, NoSuchNetnsError
from nftproxy.nft.model import Family, Set, Table
from nftproxy.nft.read import Counted, TableReader, generation, table_names
from nftproxy.nft.stages import STAGE_ELEMENTS, ElementStage, Stage, load_stages
from nftproxy.nft.transaction import Batch
from nftproxy.nft.wire import Message, Socket


class ErrorKind(StrEnum):
    """What went wrong with a transaction."""

    NOT_FOUND = "not found"
    EXISTS = "exists"
    INVALID = "invalid"
    BUSY = "busy"
    UNSUPPORTED = "unsupported"
    OTHER = "other"


class NftError(RuntimeError):
    """A transaction the kernel refused; nothing of it was applied."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


_PATTERNS = (
    ("No such file or directory", ErrorKind.NOT_FOUND),
    ("does not exist", ErrorKind.NOT_FOUND),
    ("File exists", ErrorKind.EXISTS),
    ("Device or resource busy", ErrorKind.BUSY),
    ("Operation not supported", ErrorKind.UNSUPPORTED),
    ("not supported", ErrorKind.UNSUPPORTED),
    ("syntax error", ErrorKind.INVALID),
    ("Invalid argument", ErrorKind.INVALID),
    ("datatype mismatch", ErrorKind.INVALID),
    ("Error:", ErrorKind.INVALID),
)


def classify(message: str) -> ErrorKind:
    """The kind of a libnftables error message (the first that matches wins)."""
    for needle, kind in _PATTERNS:
        if needle in message:
            return kind
    return ErrorKind.OTHER


class Kernel(Protocol):
    """What nftproxy needs from nftables."""

    def apply(self, batch: Batch) -> None:
        """Apply a sync's batch as one atomic transaction; raise NftError if refused."""

    def run(self, script: str) -> None:
        """Run a script as one atomic transaction; raise NftError if refused."""

    def read_table(self, family: Family, name: str, *, elements: bool = True) -> Table | None:
        """The table as the kernel holds it (without the named sets' elements unless
        ``elements``), or None when it is absent."""

    def read_set(self, family: Family, table: str, name: str) -> Set | None:
        """One set with its elements (a dynamic set's too), or None when it (or its
        table) is absent."""

    def tables(self, family: Family) -> set[str]:
        """The names of the tables in a family."""

    def list_table(self, family: Family, name: str) -> dict[str, Any] | None:
        """``nft -j list table`` as parsed JSON, or None when the table is absent."""

    def delete_stale_flows(self, plan: StalePlan) -> int:
        """Delete the conntrack entries plan finds stale; how many were deleted."""

    def generation(self) -> int:
        """The ruleset generation (moved by every committed transaction)."""


CLONE_NEWNET = 0x40000000
CHILD_SCRIPT_BYTES = 1 << 20
"""Scripts larger than this run in an ``nft`` child process (see :meth:`Libnftables.run`)."""


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


NETNS_DIR = Path("/run/netns")


def require_netns(name: str) -> None:
    """Fail unless the named network namespace exists (pyroute2 would create it)."""
    if not (NETNS_DIR / name).exists():
        raise NoSuchNetnsError(f"--netns {name}: no such network namespace (see ip netns list)")


def netns_command(netns: str | None, *command: str) -> list[str]:
    """A command line that runs command inside the named network namespace."""
    return ["ip", "netns", "exec", netns, *command] if netns else list(command)


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """This thread inside the named network namespace (sockets opened here stay in it)."""
    if netns is None:
        yield
        return
    require_netns(netns)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def _encode(stages: list[Stage]) -> None:
    """Encode the element stages among stages now (an error waits for the stage)."""
    for stage in stages:
        if isinstance(stage, ElementStage):
            with contextlib.suppress(ValueError):
                stage.requests()  # kept for when the stage runs


class Libnftables:
    """The real kernel, through Debian's libnftables binding.

    With ``netns`` both netlink sockets (libnftables' and the reader's) are opened
    inside that network namespace when the object is made, and stay there.
    """

    stage_elements = STAGE_ELEMENTS
    """Elements per stage of a fresh load."""

    def __init__(self, netns: str | None = None) -> None:
        import nftables  # noqa: PLC0415 - a system package; render does not need it

        self.netns = netns
        with in_netns(netns):
            self._nft = nftables.Nftables()
            self._sock = Socket()
        self._nft.set_handle_output(False)

    def _cmd(self, text: str, *, as_json: bool = False) -> str:
        self._nft.set_json_output(as_json)
        rc, out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError(classify(err), err.strip())
        return str(out)

    def apply(self, batch: Batch) -> None:
        """Apply a sync's batch: rendered to nft's syntax, run as one transaction
        (a fresh load: as several, see :mod:`nftproxy.nft.stages`)."""
        first, *rest = load_stages(batch, self.stage_elements)
        if rest:  # nft loads the first while the elements of the rest are encoded
            with ThreadPoolExecutor(max_workers=1) as pool:
                running = pool.submit(self.stage, first)
                try:
                    _encode(rest)
                finally:
                    running.result()
        else:
            self.stage(first)
        for stage in rest:
            self.stage(stage)

    def stage(self, stage: Stage) -> None:
        """Run one stage of a batch as one transaction."""
        if isinstance(stage, ElementStage):
            self.write_elements(stage)
        else:
            self.run(stage)

    def write_elements(self, stage: ElementStage) -> None:
        """Add elements over netlink as one transaction (no nft parser: a fresh
        load's elements, see :mod:`nftproxy.nft.write`)."""
        try:
            self._sock.transact(Message.NEWSETELEM, stage.requests())
        except (OSError, ValueError) as err:  # NetlinkError is an OSError
            text = err.strerror if isinstance(err, NetlinkError) else str(err)
            raise NftError(classify(text or str(err)), f"adding set elements: {err}") from err

    def run(self, script: str) -> None:
        """Run a script as one atomic transaction.

        A large one (a full load) goes to an ``nft -f -`` child process: nft's
        parser needs about 30 times the script's size, and memory libnftables takes
        in a long-running process stays resident (measured at 10,000 Services: a
        6 MB script, 174 MB more RSS for good). The child gives it back on exit.
        """
        if len(script) > CHILD_SCRIPT_BYTES and shutil.which("nft"):
            self._run_in_child(script)
        elif script:
            self._cmd(script)

    def _run_in_child(self, script: str) -> None:
        done = subprocess.run(
            netns_command(self.netns, "nft", "-f", "-"),
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise NftError(classify(done.stderr), done.stderr.strip())

    def check(self, script: str) -> None:
        """Have the kernel validate a script without committing it."""
        self._nft.set_dry_run(True)
        try:
            self._cmd(script)
        finally:
            self._nft.set_dry_run(False)

    def _list(self, what: str) -> dict[str, Any] | None:
        """``nft -j list WHAT`` parsed, or None when it does not exist."""
        try:
            out = self._cmd(f"list {what}", as_json=True)
        except NftError as err:
            if err.kind == ErrorKind.NOT_FOUND:
                return None
            raise
        try:
            listing: dict[str, Any] = orjson.loads(out)
        except orjson.JSONDecodeError as err:
            # nft 1.0.6 stops its JSON in the middle of a dormant table's flags.
            raise NftError(
                ErrorKind.OTHER, f"nft printed unreadable JSON for {what}: {err}"
            ) from err
        return listing

    def list_table(self, family: Family, name: str) -> dict[str, Any] | None:
        """The table as nft's JSON, or None when it does not exist."""
        return self._list(f"table {family.value} {name}")

    def read_table(self, family: Family, name: str, *, elements: bool = True) -> Table | None:
        """The table as the kernel holds it, read over netlink."""
        return TableReader(self._sock, family, name, elements=elements).read()

    def read_set(self, family: Family, table: str, name: str) -> Set | None:
        """One set with its elements, read over netlink."""
        return TableReader(self._sock, family, table).read_set(name)

    def tables(self, family: Family) -> set[str]:
        """The names of the tables in a family."""
        return table_names(self._sock, family)

    def delete_stale_flows(self, plan: StalePlan) -> int:
        """Delete stale conntrack entries (the netfilter socket speaks conntrack too)."""
        return delete_stale(plan, self._sock)

    def generation(self) -> int:
        """The ruleset generation, read over netlink."""
        return generation(self._sock)


class Counters:
    """Element counters, read on a netlink socket of its own (opened in ``netns``):
    a scrape in the metrics server's thread never shares the sync's socket."""

    def __init__(self, netns: str | None = None) -> None:
        with in_netns(netns):
            self._sock = Socket()
        self._lock = threading.Lock()

    def read(self, family: Family, table: str, name: str) -> list[Counted]:
        """The counters of a set's elements (none when it is absent or counts nothing)."""
        with self._lock:
            return TableReader(self._sock, family, table).counters(name)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
