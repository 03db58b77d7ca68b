"""When the loop syncs and when it checks for drift: a bounded-frequency runner, as
kube-proxy's ``BoundedFrequencyRunner``, with an injectable clock.

A sync runs when one is wanted (a change, a failure, a repair) or every
``max_interval`` regardless, but never sooner than ``min_interval`` after the last
one started; a drift check runs every ``drift_interval`` once there is something
to check. The runner only decides: the loop acts and reports back, so its timing
is tested with a fake clock and no real time.
"""

from __future__ import annotations

import math
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
    _last_start: float = field(default=-math.inf)
    _next_period: float = 0.0
    _next_drift: float = 0.0

    def decide(self, *, wanted: bool, can_check: bool) -> tuple[Step, float]:
        """The next step: sync, check drift, or wait (with the longest wait before
        anything is due; a change may come sooner). ``wanted``: a sync is asked
        for; ``can_check``: there is an applied state to check."""
        now = self.clock()
        due = wanted or now >= self._next_period
        if due and now - self._last_start >= self.min_interval:
            self._last_start = now
            return Step.SYNC, 0.0
        if can_check and now >= self._next_drift:
            self._next_drift = now + self.drift_interval
            return Step.DRIFT, 0.0
        wait = self._next_period - now
        if can_check:
            wait = min(wait, self._next_drift - now)
        if due:
            wait = min(wait, self._last_start + self.min_interval - now)
        return Step.WAIT, max(wait, 0.0)

    def synced(self) -> None:
        """A sync ended (well or not): the next periodic one is ``max_interval`` away."""
        self._next_period = self.clock() + self.max_interval
