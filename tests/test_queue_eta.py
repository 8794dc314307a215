"""engine.run.queue_eta: a queue's (and a sweep's) time left from its runs' ETAs."""

from __future__ import annotations

from engine.run.queue import Entry
from engine.run.queue_eta import queue_eta


def entry(n: int, state: str, preset: str = "p", outcome: str | None = None) -> Entry:
    return Entry(id=n, position=n, preset=preset, state=state, run_id=f"r{n}", outcome=outcome)


def test_running_left_plus_waiting_at_their_presets_finished_time_over_the_slots():
    entries = [
        entry(1, "ended", "a", "finished"),
        entry(2, "ended", "a", "finished"),
        entry(3, "ended", "b", "finished"),
        entry(4, "ended", "a", "failed"),  # a failure says nothing about how long a run takes
        entry(5, "launched", "a"),
        entry(6, "queued", "a"),
        entry(7, "queued", "b"),
    ]
    seconds = {"r1": 100.0, "r2": 140.0, "r3": 30.0, "r4": 5.0}
    etas = {"r5": 40.0}
    eta = queue_eta(entries, lambda e: etas.get(e.run_id), lambda e: seconds.get(e.run_id))
    assert (eta.running, eta.waiting, eta.total) == (40.0, 120.0 + 30.0, 190.0)
    two_gpus = queue_eta(entries, lambda e: etas.get(e.run_id), lambda e: seconds.get(e.run_id), slots=2)
    assert two_gpus.waiting == 75.0


def test_unknown_rather_than_wrong():
    nothing_finished = [entry(1, "launched"), entry(2, "queued")]
    eta = queue_eta(nothing_finished, lambda e: 50.0, lambda e: None)
    assert eta.running == 50.0 and eta.waiting is None and eta.total is None
    no_run_eta = queue_eta([entry(1, "launched")], lambda e: None, lambda e: None)
    assert no_run_eta.total is None


def test_a_sweeps_trials_not_yet_asked_count_at_the_finished_ones_time():
    entries = [entry(1, "ended", outcome="finished"), entry(2, "launched")]
    eta = queue_eta(entries, lambda e: 10.0, lambda e: 60.0, not_yet_queued=3)
    assert eta.total == 10.0 + 3 * 60.0
