"""The one-line header: run, preset, model, status, epoch/step, images/s, ETA."""

from __future__ import annotations

import math
import re

from rich.text import Text

from engine.run.facts import RunFacts
from tui.widgets.diffed import DiffedWidget

_RUN_STAMP = re.compile(r"^\d{8}-\d{6}-")
"""The UTC date and time that start a run id."""

STATUS_STYLES = {
    "starting": "bold yellow",
    "loading": "bold yellow",
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
SHOWN_PHASES = ("starting", "loading", "validating", "restarting")
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
    step count, images/s) go to the terminal.
    """

    def show_idle(self, message: str = "pick a preset, Enter starts it") -> None:
        """No run watched."""
        self._set_state_class("-idle")
        self.show(Text.assemble(("convdeck", "bold"), "  ", (message, "dim")))

    def show_run(self, state: RunFacts) -> None:
        """Describe ``state``; the status (or phase) becomes a CSS class too."""
        self._set_state_class(f"-{status_word(state)}")
        line = self._describe(state, state.run_id)
        if line.cell_len > self.size.width and _RUN_STAMP.match(state.run_id):
            # Narrow: the figures matter more than the id's date (`convdeck runs` has it).
            line = self._describe(state, "…" + _RUN_STAMP.sub("", state.run_id))
        self.show(line)

    def _set_state_class(self, name: str) -> None:
        # Restyling costs a few ms: touch the classes only when the state changes.
        if not self.has_class(name):
            self.set_classes(name)

    def _describe(self, state: RunFacts, run_id: str) -> Text:
        parts: list[Text | str] = [Text(run_id, "bold")]
        if not state.preset or state.preset not in state.run_id:
            parts.append(state.preset or "?")  # run ids carry their preset's name: say it once
        if state.revision:
            parts.append(Text(state.model, "cyan"))  # a remedy changed it: what trains now
        word = status_word(state)
        parts.append(Text(f" {word} ", STATUS_STYLES.get(word, "")))
        if distributed := distribution(state):
            parts.append(Text(distributed, "cyan"))
        epochs = f"/{state.epochs}" if state.epochs else ""
        parts.append(f"epoch {state.epoch}{epochs}")
        parts.append(f"step {state.step:,}")
        if state.images_per_sec:
            parts.append(f"{state.images_per_sec:,.0f} img/s")
        eta = state.eta_seconds()
        if eta is not None and state.status == "running" and state.phase == "training":
            parts.append(f"ETA {format_duration(eta)}")
        if state.reason:
            parts.append(Text(state.reason, "yellow" if state.phase == "restarting" else "red"))
        line = Text("  ").join(Text(p) if isinstance(p, str) else p for p in parts)
        line.no_wrap = True
        line.overflow = "ellipsis"
        return line
