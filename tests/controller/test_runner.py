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


class TestBackoff:
    def test_failures_back_off_exponentially_up_to_the_sync_period(self) -> None:
        clock = Clock()
        r = Runner(1.0, 30.0, 60.0, clock, jitter=lambda: 0.999)
        waits = []
        for _ in range(7):
            step, _ = r.decide(wanted=True, can_check=False)
            assert step is Step.SYNC
            r.synced(ok=False)
            step, wait = r.decide(wanted=True, can_check=False)
            assert step is Step.WAIT
            waits.append(round(wait, 2))
            clock.now += wait
        assert waits == [1.0, 2.0, 4.0, 7.99, 15.98, 29.97, 29.97]

    def test_a_success_ends_the_backoff(self) -> None:
        clock = Clock()
        r = Runner(1.0, 30.0, 60.0, clock, jitter=lambda: 0.999)
        for _ in range(4):
            r.decide(wanted=True, can_check=False)
            r.synced(ok=False)
            clock.now += 30
        r.decide(wanted=True, can_check=False)
        r.synced(ok=True)
        clock.now += 1.0
        assert r.decide(wanted=True, can_check=False) == (Step.SYNC, 0.0)

    def test_full_jitter_never_retries_sooner_than_the_min_interval(self) -> None:
        clock = Clock()
        r = Runner(1.0, 30.0, 60.0, clock, jitter=lambda: 0.0)
        r.decide(wanted=True, can_check=False)
        r.synced(ok=False)
        assert r.decide(wanted=True, can_check=False) == (Step.WAIT, 1.0)

    def test_a_refused_ruleset_is_tried_a_few_times_a_minute(self) -> None:
        """Average jitter, after the first minute: about four tries a minute."""
        clock = Clock()
        r = Runner(1.0, 30.0, 60.0, clock, jitter=lambda: 0.5)
        tries = []
        while clock.now < 100.0 + 300.0:
            step, wait = r.decide(wanted=True, can_check=False)
            if step is Step.SYNC:
                tries.append(clock.now)
                r.synced(ok=False)
            else:
                clock.now += wait
        last_minute = [t for t in tries if t >= clock.now - 60]
        assert len(last_minute) <= 5
