"""The one-line header: run, preset, model, status, epoch/step, images/s, ETA."""

from __future__ import annotations

import math
import re
from typing import Any

from rich.text import Text

from engine.run.facts import RunFacts
from tui.fit import clip_words, fit_parts
from tui.widgets.diffed import DiffedWidget

_RUN_STAMP = re.compile(r"^\d{8}-\d{6}-")
"""The UTC date and time that start a run id."""

STATUS_STYLES = {
    "starting": "bold yellow",
    "loading": "bold yellow",
    "building": "bold yellow",
    "running": "bold green",
    "validating": "bold green",
    "paused": "bold yellow",
    "waiting": "bold red reverse",
    "restarting": "bold yellow reverse",
    "finished": "bold cyan",
    "stopped": "bold cyan",
    "failed": "bold red",
    "crashed": "bold red",
    "hung": "bold red reverse",
    "stalled": "bold red reverse",
    "pruned": "bold cyan",
}
"""A style for each word the header and the runs screen show: a status, or a phase of a running run."""
SHOWN_PHASES = ("starting", "building", "loading", "validating", "restarting")
"""Phases of a running run the header names instead of ``running``."""


def status_word(facts: RunFacts) -> str:
    """``running``, or what a running run is doing when that says more; else its status."""
    status = facts.status
    if status == "running" and facts.phase in SHOWN_PHASES:
        return facts.phase
    return status


def format_duration(seconds: float) -> str:
    """``2h05m``, ``3m12s`` or ``45s``; ``?`` for a time that is not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def distribution(state: RunFacts) -> str:
    """``mirrored ×2`` or ``multi_worker ×4 on 2 workers``; empty for one device."""
    replicas, workers = state.replicas or 1, state.workers or 1
    if not state.strategy or (state.strategy == "one_device" and replicas == 1):
        return ""
    return f"{state.strategy} ×{replicas}" + (f" on {workers} workers" if workers > 1 else "")


class RunHeader(DiffedWidget):
    """Shows the watched run in one line, or how to start one.

    Updated on every batch of events; only the characters that changed (the
    step count, images/s) go to the terminal. What does not fit the width is
    left out on purpose, the least important part first (:func:`describe_run`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: RunFacts | str = ""

    def show_idle(self, message: str = "pick a preset, Enter starts it") -> None:
        """No run watched."""
        self._set_state_class("-idle")
        self._shown = message
        self.show(self._idle_line(message))

    def show_run(self, state: RunFacts) -> None:
        """Describe ``state``; the status (or phase) becomes a CSS class too."""
        self._set_state_class(f"-{status_word(state)}")
        self._shown = state
        self.show(describe_run(state, self._width()))

    def on_resize(self) -> None:
        shown = self._shown
        self.show(describe_run(shown, self._width()) if isinstance(shown, RunFacts) else self._idle_line(shown))

    def _width(self) -> int:
        return self.content_size.width or 1000  # before the first layout: all of it, fitted on resize

    def _idle_line(self, message: str) -> Text:
        room = self._width() - len("convdeck  ")
        return Text.assemble(("convdeck", "bold"), "  ", (clip_words(message, room), "dim"))

    def _set_state_class(self, name: str) -> None:
        # Restyling costs a few ms: touch the classes only when the state changes.
        if not self.has_class(name):
            self.set_classes(name)


def describe_run(state: RunFacts, width: int) -> Text:
    """The header line of ``state`` in ``width`` cells.

    Every part is whole: the least important ones (images/s, the strategy, the
    step count, the preset) are left out first, the run id loses its date
    (``convdeck runs`` has it), and a long reason ends at a word with ``…``.
    """
    run_id = state.run_id
    if len(run_id) + 40 > width and _RUN_STAMP.match(run_id):
        run_id = "…" + _RUN_STAMP.sub("", run_id)
    word = status_word(state)
    essential = [Text(run_id, "bold"), Text(f" {word} ", STATUS_STYLES.get(word, "")), Text(_epoch(state))]
    parts: list[tuple[int, Text]] = [(9, essential[0])]
    if not state.preset or state.preset not in state.run_id:
        parts.append((3, Text(state.preset or "?")))  # run ids carry their preset's name: say it once
    if state.revision:
        parts.append((5, Text(state.model, "cyan")))  # a remedy changed it: what trains now
    parts.append((10, essential[1]))
    if distributed := distribution(state):
        parts.append((2, Text(distributed, "cyan")))
    parts.append((8, essential[2]))
    parts.append((4, Text(f"step {state.step:,}")))
    if state.images_per_sec and state.live:
        parts.append((1, Text(f"{state.images_per_sec:,.0f} img/s")))
    eta = state.eta_seconds()
    if eta is not None and state.status == "running" and state.phase == "training":
        parts.append((6, Text(f"ETA {format_duration(eta)}")))
    parts.extend(_validation_parts(state))
    if state.reason:
        room = width - sum(t.cell_len + 2 for t in essential)
        style = "yellow" if state.phase == "restarting" else "red"
        parts.append((7, Text(clip_words(state.reason, max(16, room)), style)))
    line = fit_parts(parts, width)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def _epoch(state: RunFacts) -> str:
    return f"epoch {state.epoch}" + (f"/{state.epochs}" if state.epochs else "")


def _validation_parts(state: RunFacts) -> list[tuple[int, Text]]:
    """An ended run's last and best validation accuracy: what it came to."""
    last, best = state.val_accuracy, state.best_val_accuracy
    if state.live or last is None:
        return []
    parts = [(8, Text(f"val acc {last:.3f}", "bold"))]
    if best is not None and best > last:
        parts.append((7, Text(f"best {best:.3f} (epoch {state.best_epoch})")))
    elif best is not None:
        parts[0][1].append(" (best)", "dim")
    return parts
