"""How long a queue (or a sweep's share of it) still takes, from its runs' own ETAs.

A running entry's time left is its run's ETA (engine.run.facts). A waiting
entry has no run yet, so it is estimated at the median wall time of the
entries of the same preset that finished (any preset's, when none of its
own did); an entry nothing is known about makes the whole figure unknown
rather than wrong. Runs go ``slots`` at a time (one per free GPU; one on a
CPU), so the waiting ones are spread over the slots.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.run.queue import CLAIMED, ENDED, LAUNCHED, QUEUED, Entry


@dataclass(frozen=True)
class QueueEta:
    """Seconds left: for the running entries, for the waiting ones, and both together (None: unknown)."""

    running: float | None
    waiting: float | None
    total: float | None


def queue_eta(
    entries: Iterable[Entry],
    run_eta: Callable[[Entry], float | None],
    run_seconds: Callable[[Entry], float | None],
    slots: int = 1,
    not_yet_queued: int = 0,
) -> QueueEta:
    """The queue's ETA.

    Args:
        entries: the queue's entries (or one sweep's).
        run_eta: a started entry's time left (its run's ETA), None when unknown.
        run_seconds: a finished entry's wall time, None when unknown.
        slots: runs that go at once.
        not_yet_queued: more runs to come that are not entries yet (a sweep's trials not asked for).
    """
    entries = list(entries)
    durations: dict[str, list[float]] = {}
    for entry in entries:
        if entry.state == ENDED and entry.outcome == "finished":
            seconds = run_seconds(entry)
            if seconds:
                durations.setdefault(entry.preset, []).append(seconds)
    everyone = [s for values in durations.values() for s in values]
    running_left = [run_eta(e) for e in entries if e.state in (CLAIMED, LAUNCHED)]
    running = None if any(left is None for left in running_left) else max(running_left, default=0.0)
    waiting_entries = [e for e in entries if e.state == QUEUED]
    estimates = [_estimate(durations.get(e.preset) or everyone) for e in waiting_entries]
    extra = [_estimate(everyone)] * not_yet_queued
    waiting_all = estimates + extra
    waiting = None if any(e is None for e in waiting_all) else sum(waiting_all) / max(1, slots)
    total = None if running is None or waiting is None else running + waiting
    return QueueEta(running, waiting, total)


def _estimate(durations: list[float]) -> float | None:
    return statistics.median(durations) if durations else None


def run_figures(home) -> tuple[Callable[[Entry], float | None], Callable[[Entry], float | None]]:
    """``run_eta`` and ``run_seconds`` read from the runs' events (one fold per run, cached)."""
    from engine.run.store import runs_root, summarize_run

    cache: dict[str, object] = {}

    def facts(entry: Entry):
        if entry.run_id not in cache:
            run_dir = runs_root(home) / entry.run_id
            cache[entry.run_id] = summarize_run(run_dir) if run_dir.is_dir() else None
        return cache[entry.run_id]

    def eta(entry: Entry) -> float | None:
        found = facts(entry) if entry.run_id else None
        return found.eta_seconds() if found is not None else None

    def seconds(entry: Entry) -> float | None:
        found = facts(entry) if entry.run_id else None
        return found.elapsed_seconds() if found is not None else None

    return eta, seconds
