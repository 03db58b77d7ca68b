"""The errors of nf_tables netlink requests.

Their own module because they are ``OSError`` subclasses, which mypyc cannot
compile: :mod:`nftproxy.nft.wire`, which raises them, is compiled (setup.py).
"""

from __future__ import annotations

import errno


class NoSuchNetnsError(ValueError):
    """A named network namespace that does not exist (pyroute2 would create it)."""


class NetlinkError(OSError):
    """The kernel answered a request with an error."""


class DumpInterruptedError(NetlinkError):
    """The ruleset changed while it was being dumped: read it again."""

    def __init__(self) -> None:
        super().__init__(errno.EINTR, "nf_tables dump interrupted by a change")
