"""The runner's schedule, on a fake clock: no real time passes in these tests."""

from __future__ import annotations

from nftproxy.controller.runner import Runner, Step


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def runner(clock: Clock, *, min_interval: float = 1.0) -> Runner:
    return Runner(min_interval, 30.0, 60.0, clock)


class TestRunner:
    def test_the_first_decision_is_a_sync(self) -> None:
        assert runner(Clock()).decide(wanted=False, can_check=False) == (Step.SYNC, 0.0)

    def test_a_wanted_sync_waits_out_the_min_interval(self) -> None:
        clock = Clock()
        r = runner(clock)
        r.decide(wanted=True, can_check=False)
        r.synced()
        clock.now += 0.25
        assert r.decide(wanted=True, can_check=False) == (Step.WAIT, 0.75)
        clock.now += 0.75
        assert r.decide(wanted=True, can_check=False) == (Step.SYNC, 0.0)

    def test_nothing_wanted_syncs_every_max_interval(self) -> None:
        clock = Clock()
        r = runner(clock)
        r.decide(wanted=False, can_check=False)
        r.synced()
        assert r.decide(wanted=False, can_check=False) == (Step.WAIT, 30.0)
        clock.now += 30.0
        assert r.decide(wanted=False, can_check=False)[0] is Step.SYNC

    def test_drift_checks_come_between_syncs_once_something_was_applied(self) -> None:
        clock = Clock()
        r = runner(clock)
        r.decide(wanted=False, can_check=False)
        r.synced()
        assert r.decide(wanted=False, can_check=True) == (Step.DRIFT, 0.0)
        assert r.decide(wanted=False, can_check=True) == (Step.WAIT, 30.0)
        clock.now += 30.0
        assert r.decide(wanted=False, can_check=True)[0] is Step.SYNC
        r.synced()
        clock.now += 30.0  # 60 s after the first check: the next one is due, and a sync
        assert r.decide(wanted=False, can_check=True)[0] is Step.SYNC
        assert r.decide(wanted=False, can_check=True) == (Step.DRIFT, 0.0)

    def test_no_min_interval_syncs_at_once(self) -> None:
        clock = Clock()
        r = runner(clock, min_interval=0.0)
        for _ in range(3):
            assert r.decide(wanted=True, can_check=False) == (Step.SYNC, 0.0)
            r.synced()
