"""What the TUI needs from the run queue: read it, change it, and how long its live runs have left.

Every method here blocks on SQLite or the run files, so the app calls them
from thread workers only. No Textual: a :class:`QueueView` is plain data the
header and the queue screen draw, tested without a terminal. The wording of
the changes mirrors ``convdeck queue`` (:mod:`tui.cli.queue`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.run.queue import Entry

ETA_REREAD_SECONDS = 15.0
"""How long a live run's ETA is counted down before its events are read again:
a summary reads the whole events file, a header redraw must not."""


def run_eta(run_dir: Path) -> float | None:
    """Seconds left of the run in ``run_dir`` while it runs, when its events tell; else None.

    The queue's one reading of a run's progress. The run-facts fold
    (``summarize_run`` returning facts with ``eta_seconds()``) answers it;
    a summary without it knows no ETA, and None is what is known then.
    """
    from engine.run.store import summarize_run

    summary = summarize_run(run_dir)
    eta_seconds = getattr(summary, "eta_seconds", None)
    if summary.status != "running" or not callable(eta_seconds):
        return None
    return eta_seconds()


@dataclass
class QueueView:
    """The queue at one moment: its entries in order, whether it is paused, its runner, ETAs.

    Attributes:
        entries: waiting and started entries first (by position), then ended ones.
        paused: no new run starts.
        runner_pid: the runner working the queue, else None.
        etas: seconds left of each live entry's run (by run id), None when unknown.
    """

    entries: list[Entry] = field(default_factory=list)
    paused: bool = False
    runner_pid: int | None = None
    etas: dict[str, float | None] = field(default_factory=dict)

    @property
    def waiting(self) -> list[Entry]:
        from engine.run.queue import QUEUED

        return [e for e in self.entries if e.state == QUEUED]

    @property
    def running(self) -> list[Entry]:
        from engine.run.queue import CLAIMED, LAUNCHED

        return [e for e in self.entries if e.state in (CLAIMED, LAUNCHED)]

    def place(self, entry: Entry) -> int | None:
        """An entry's place among the waiting ones (1 starts next), None once started."""
        ids = [e.id for e in self.waiting]
        return ids.index(entry.id) + 1 if entry.id in ids else None

    def running_eta(self) -> float | None:
        """Seconds until the last of the running runs ends, among those whose ETA is known."""
        known = [self.etas.get(e.run_id) for e in self.running if e.run_id]
        known = [eta for eta in known if eta is not None]
        return max(known) if known else None


class QueueLink:
    """The queue of a convdeck home, as the TUI uses it; every call blocks (thread workers).

    Args:
        home: the convdeck home (``$CONVDECK_HOME`` when None).
        start_runner: starts a runner unless one works the queue; returns its pid
            (``engine.run.queue_runner.start_runner`` when None; tests give a fake).
        eta_of: seconds left of a live run from its directory (:func:`run_eta`).
        clock: monotonic seconds, for counting an ETA down between readings.
    """

    def __init__(
        self,
        home: Path | None = None,
        start_runner: Callable[[Path | None], int | None] | None = None,
        eta_of: Callable[[Path], float | None] = run_eta,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self._start_runner = start_runner
        self.eta_of = eta_of
        self.clock = clock
        self._etas: dict[str, tuple[float | None, float]] = {}
        """Run id -> (ETA when read, clock then); the header and the screen share it."""
        self._lock = threading.Lock()
        self._changing = threading.Lock()

    # -- reading ------------------------------------------------------------------------

    def read(self) -> QueueView:
        """The queue now; a home without a queue file reads as empty (and gets none)."""
        from engine.run.queue import RunQueue, queue_path
        from engine.run.queue_runner import runner_pid

        if not queue_path(self.home).exists():
            return QueueView()
        store = RunQueue(self.home)
        try:
            view = QueueView(entries=store.entries(), paused=store.paused())
        finally:
            store.close()
        view.runner_pid = runner_pid(self.home)
        view.etas = self._live_etas(view.running)
        return view

    def _live_etas(self, running: list[Entry]) -> dict[str, float | None]:
        from engine.run.store import runs_root

        now = self.clock()
        etas: dict[str, float | None] = {}
        with self._lock:
            for entry in running:
                if not entry.run_id:
                    continue
                known = self._etas.get(entry.run_id)
                if known is None or now - known[1] >= ETA_REREAD_SECONDS:
                    run_dir = runs_root(self.home) / entry.run_id
                    known = (self.eta_of(run_dir) if run_dir.is_dir() else None, now)
                    self._etas[entry.run_id] = known
                eta, read_at = known
                etas[entry.run_id] = None if eta is None else max(0.0, eta - (now - read_at))
            for run_id in set(self._etas) - set(etas):
                del self._etas[run_id]  # ended: forget it
        return etas

    # -- changing -----------------------------------------------------------------------

    def add(self, preset: str, overrides: list[str]) -> tuple[Entry, int | None]:
        """Queue a run of ``preset`` with ``--set`` ``overrides``, checked first; the entry and runner pid.

        Raises:
            ConfigError: the preset or a setting does not load (nothing is queued).
        """
        from engine.presets import load_preset

        load_preset(preset, overrides, self.home)  # what the runner will load, refused now
        entry = self._with_store(lambda store: store.add(preset, overrides))
        return entry, self.start_runner()

    def remove(self, entry_id: int) -> str:
        """Take a waiting (or ended) entry out; the line saying so."""
        entry = self._with_store(lambda store: store.remove(entry_id))
        return f"removed entry {entry.id} ({entry.preset})"

    def move_by(self, entry_id: int, delta: int) -> None:
        """Start a waiting entry ``delta`` places later (earlier when negative) among the waiting ones.

        Raises:
            ConfigError: the entry has started or is gone.
        """
        from engine.run.queue import QUEUED

        def move(store: Any) -> None:
            entry = store.get(entry_id)
            waiting = [e.id for e in store.entries(include_ended=False) if e.state == QUEUED]
            if entry.id not in waiting:
                store.move(entry_id, 1)  # the store's own refusal: it has started
            place = waiting.index(entry.id) + 1 + delta
            if 1 <= place <= len(waiting):
                store.move(entry_id, place)

        self._with_store(move)

    def toggle_pause(self) -> str:
        """Pause a working queue, resume a paused one (starting a runner); the line saying so."""

        def toggle(store: Any) -> bool:
            store.set_paused(not store.paused())
            return store.paused()

        if self._with_store(toggle):
            return "queue paused: running runs go on, no new one starts"
        return f"queue resumed (runner pid {self.start_runner()})"

    def start_runner(self) -> int | None:
        if self._start_runner is None:
            from engine.run.queue_runner import start_runner

            return start_runner(self.home)
        return self._start_runner(self.home)

    def _with_store(self, change: Callable[[Any], Any]) -> Any:
        """``change(store)`` on a connection of its own; one change at a time from this app."""
        from engine.run.queue import RunQueue

        with self._changing:
            store = RunQueue(self.home)
            try:
                return change(store)
            finally:
                store.close()


def overrides_between(preset: RunConfig, config: RunConfig) -> list[str]:
    """The ``--set`` assignments that turn ``preset`` into ``config`` (the fields that differ).

    A field set to None has no ``--set`` spelling (TOML has no null); the
    config pane sets none.
    """
    from engine.run.sweep_space import assignment

    changed: list[str] = []

    def walk(before: Any, after: Any, path: list[str]) -> None:
        if isinstance(after, dict):
            for key in after:
                walk(before.get(key) if isinstance(before, dict) else None, after[key], path + [key])
        elif before != after and after is not None:
            changed.append(assignment(".".join(path), after))

    walk(preset.model_dump(mode="json"), config.model_dump(mode="json"), [])
    return changed
