"""When the loop syncs and when it checks for drift: a bounded-frequency runner, as
kube-proxy's ``BoundedFrequencyRunner``, with an injectable clock.

A sync runs when one is wanted (a change, a failure, a repair) or every
``max_interval`` regardless, but never sooner than ``min_interval`` after the last
one started; a drift check runs every ``drift_interval`` once there is something
to check. After a failed sync the next waits longer each time (exponential, full
jitter, at least ``min_interval``, at most ``max_interval``), as kube-proxy's
runner retries, so a ruleset the kernel keeps refusing costs a few tries a
minute, not one a second. The runner only decides: the loop acts and reports back, so its timing
is tested with a fake clock and no real time.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class Step(Enum):
    """What the loop does next."""

    SYNC = "sync"
    DRIFT = "drift"
    WAIT = "wait"


@dataclass
class Runner:
    """The schedule of syncs and drift checks (seconds, from ``clock``)."""

    min_interval: float
    max_interval: float
    drift_interval: float
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random
    """A number in [0, 1): the fraction of the backoff waited (full jitter)."""
    failures: int = 0
    """Failed syncs in a row."""
    _last_start: float = field(default=-math.inf)
    _next_period: float = 0.0
    _next_drift: float = 0.0
    _retry_at: float = field(default=-math.inf)

    def decide(self, *, wanted: bool, can_check: bool) -> tuple[Step, float]:
        """The next step: sync, check drift, or wait (with the longest wait before
        anything is due; a change may come sooner). ``wanted``: a sync is asked
        for; ``can_check``: there is an applied state to check."""
        now = self.clock()
        due = wanted or now >= self._next_period
        earliest = max(self._last_start + self.min_interval, self._retry_at)
        if due and now >= earliest:
            self._last_start = now
            return Step.SYNC, 0.0
        if can_check and now >= self._next_drift:
            self._next_drift = now + self.drift_interval
            return Step.DRIFT, 0.0
        wait = self._next_period - now
        if can_check:
            wait = min(wait, self._next_drift - now)
        if due:
            wait = min(wait, earliest - now)
        return Step.WAIT, max(wait, 0.0)

    def synced(self, ok: bool = True) -> None:
        """A sync ended: the next periodic one is ``max_interval`` away; after a
        failure the next try waits its backoff."""
        now = self.clock()
        self._next_period = now + self.max_interval
        if ok:
            self.failures = 0
            self._retry_at = -math.inf
            return
        self.failures += 1
        self._retry_at = now + self.backoff()

    def backoff(self) -> float:
        """The wait after the current run of failures."""
        ceiling = min(self.max_interval, max(self.min_interval, 1.0) * 2.0 ** (self.failures - 1))
        return max(self.min_interval, ceiling * self.jitter())
