"""The headless progress display of ``convdeck run``: a bar on a terminal, plain lines in a log.

On a terminal a rich progress bar shows epoch, step, loss, accuracy,
images/s and ETA, with a line per finished epoch above it. When stdout is a
file or a pipe the same figures go out as plain lines, one per epoch and one
every few seconds of steps, so a log never holds bar characters or ANSI
codes. ``--json`` prints the events themselves, one JSON object a line.
Before the first step both name what the worker does meanwhile (the run's
phase: loading TensorFlow, building model, compiling the first step).

Imports neither TensorFlow nor Textual.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Protocol, TextIO

from engine.run import protocol
from engine.run.facts import PHASE_WORDS, WAITING_PHASES, RunFacts
from engine.run.protocol import (
    TERMINAL_EVENTS,
    Checkpoint,
    EpochEnd,
    Event,
    Log,
    MemoryWarning,
    Nan,
    Oom,
    Paused,
    RemedyApplied,
    RemedyOffer,
    Resumed,
    RunStarted,
    Step,
)


class Display(Protocol):
    """What the CLI feeds while it follows a run."""

    def handle(self, events: list[Event]) -> None:
        """Show a batch of events."""

    def note(self, message: str) -> None:
        """Show a message from the CLI itself (e.g. what Ctrl-C does)."""

    def close(self) -> None:
        """Stop drawing; the terminal is the CLI's again."""


def make_display(
    json_lines: bool = False, stream: TextIO | None = None, line_every: float = 5.0
) -> Display:
    """The display that suits ``stream`` (stdout by default).

    Args:
        json_lines: print the events as JSON lines instead of progress.
        stream: where progress goes.
        line_every: in plain mode, seconds between step lines.
    """
    stream = stream or sys.stdout
    if json_lines:
        return JsonLinesDisplay(stream)
    if is_interactive(stream):
        return BarDisplay(stream)
    return PlainDisplay(stream, line_every)


def is_interactive(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal that can redraw a bar in place."""
    from rich.console import Console

    console = Console(file=stream)
    return console.is_terminal and not console.is_dumb_terminal


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for humans: 4 decimals, '-' when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    """``2.8 s``, ``42 s``, ``2 m 03 s``, ``1 h 02 m 03 s``, or '-' (unknown, or not finite).

    Units on every figure: ``0:03`` could be minutes or hours.
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} m {secs:02d} s"
    return f"{minutes} m {secs:02d} s" if minutes else f"{secs} s"


def fmt_rate(images_per_sec: float | None) -> str:
    """``9,759 img/s``, or '-'."""
    if images_per_sec is None or not math.isfinite(images_per_sec):
        return "- img/s"
    return f"{images_per_sec:,.0f} img/s"


def waiting_words(facts: RunFacts) -> str | None:
    """What a worker does before its first step (``loading TensorFlow``...), or None once it steps."""
    phase = facts.phase
    return PHASE_WORDS[phase] if phase in WAITING_PHASES else None


def epoch_label(facts: RunFacts, epoch: int | None = None) -> str:
    """``3/10``: the epoch of ``facts`` (or ``epoch``) and the epochs it trains to."""
    epoch = facts.epoch if epoch is None else epoch
    return f"{epoch}/{facts.epochs}" if facts.epochs else str(epoch)


def step_label(facts: RunFacts) -> str:
    """``1200/5000``: the step and the step the run ends at, when known."""
    total = facts.total_steps
    return f"{facts.step}/{total}" if total else str(facts.step)


def epoch_line(facts: RunFacts, event: EpochEnd) -> str:
    """One line for an ``epoch_end`` event."""
    loss = event.loss if event.loss is not None else facts.last_loss
    accuracy = event.accuracy if event.accuracy is not None else facts.last_accuracy
    parts = [
        f"epoch {epoch_label(facts, event.epoch)}",
        f"loss {fmt(loss)}",
        f"accuracy {fmt(accuracy)}",
        f"val_loss {fmt(event.val_loss)}",
        f"val_accuracy {fmt(event.val_accuracy)}",
    ]
    return "  ".join(parts)


def step_line(facts: RunFacts) -> str:
    """One line with the latest step figures, for logs."""
    parts = [
        f"epoch {epoch_label(facts)}",
        f"step {step_label(facts)}",
        f"loss {fmt(facts.last_loss)}",
        f"accuracy {fmt(facts.last_accuracy)}",
        fmt_rate(facts.images_per_sec),
        f"ETA {fmt_duration(facts.eta_seconds())}",
    ]
    return "  ".join(parts)


def event_line(event: Event, run_id: str = "RUN") -> str | None:
    """A line for an event that is neither a step nor an epoch end, or None to stay quiet."""
    if isinstance(event, RunStarted):
        return _started_line(event)
    if isinstance(event, Checkpoint):
        return f"checkpoint at step {_known(event.step)}"
    if isinstance(event, MemoryWarning):
        return f"memory warning: {event.message}"
    if isinstance(event, Paused):
        # Headless, nobody may be watching: say how to go on.
        return f"paused at step {_known(event.step)} (go on: convdeck ctl {run_id} resume)"
    if isinstance(event, Resumed):
        return f"resumed at step {_known(event.step)}"
    if isinstance(event, Oom):
        return _oom_line(event, run_id)
    if isinstance(event, RemedyApplied):
        return _remedy_line(event)
    if isinstance(event, Nan):
        return f"the loss became NaN at step {_known(event.step)}"
    if isinstance(event, Log):
        return event.message
    return None


def _known(value: Any) -> str:
    return "?" if value is None else str(value)


def _started_line(event: RunStarted) -> str:
    devices = ", ".join(event.devices) or "?"
    resumed = event.resumed_from_step
    start = f"resumed from step {resumed}" if resumed else "started"
    return f"run {event.run_id or '?'} {start} on {devices}" + _distribution(event)


def _distribution(event: RunStarted) -> str:
    """How the global batch splits, for a run on several replicas or workers."""
    replicas, workers = event.replicas or 1, event.workers or 1
    if replicas == 1 and workers == 1:
        return ""
    batch = event.per_replica_batch
    split = f": {replicas} replicas x {batch} = batch {replicas * batch}" if batch else ""
    text = f" ({event.strategy or '?'}{split}"
    if workers > 1:
        text += f"; worker {_known(event.worker_index)} of {workers}"
        if event.chief is False:
            text += ", the chief's run records steps and checkpoints"
    return text + ")"


def _oom_line(event: Oom, run_id: str) -> str:
    names = [remedy.name if isinstance(remedy, RemedyOffer) else remedy for remedy in event.remedies]
    line = f"out of memory at step {_known(event.step)} with batch {_known(event.batch_size)}"
    if names:
        line += f"; remedies: {', '.join(names)}"
    if names and event.waiting:
        line += f"; waiting for one: convdeck ctl {run_id} remedy {names[0]}"
    return line


def _remedy_line(event: RemedyApplied) -> str:
    detail = ", ".join(f"{field} {old} -> {new}" for field, (old, new) in event.changes.items())
    where = f" at step {event.step}" if event.step is not None else ""
    return f"remedy {event.name or '?'} applied{where}" + (f": {detail}" if detail else "")


class JsonLinesDisplay:
    """``--json``: each event as one JSON line on stdout, notes on stderr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def handle(self, events: list[Event]) -> None:
        lines = (
            json.dumps(_strict_json(protocol.to_dict(event)), allow_nan=False) + "\n"
            for event in events
        )
        self.stream.write("".join(lines))
        self.stream.flush()

    def note(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stream.flush()


def _strict_json(value: Any) -> Any:
    """NaN and infinities as null: a NaN loss must not break ``jq`` or another reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    return value


class PlainDisplay:
    """Plain lines for a file or a pipe: one per epoch end, one every ``line_every`` s of steps.

    Before the first step, a line for each phase the worker goes through
    (``loading TensorFlow``...), so a log never looks stuck for those seconds.
    """

    def __init__(self, stream: TextIO, line_every: float = 5.0) -> None:
        self.stream = stream
        self.line_every = line_every
        self.facts = RunFacts()
        self._last_line = time.monotonic()
        self._unprinted_steps = False
        self._held_checkpoint: Checkpoint | None = None
        self._phase_said: str | None = None
        self._say_phase()

    def handle(self, events: list[Event]) -> None:
        for event in events:
            self.facts.fold(event)
            self._show(event)
            self._say_phase()
        if self._unprinted_steps and time.monotonic() - self._last_line >= self.line_every:
            self._write(step_line(self.facts))
            self._unprinted_steps = False

    def _say_phase(self) -> None:
        words = waiting_words(self.facts)
        if words is not None and words != self._phase_said:
            self._write(words)
        elif words is None and self._phase_said is not None:
            # The first step came: its figures hold the compile time (a few img/s, an ETA of
            # hours). The first step line waits a full period of steady steps instead.
            self._last_line = time.monotonic()
        self._phase_said = words

    def _show(self, event: Event) -> None:
        if isinstance(event, Step):
            self._unprinted_steps = True
        elif isinstance(event, EpochEnd):
            self._write(epoch_line(self.facts, event))
            self._unprinted_steps = False
        elif isinstance(event, Checkpoint):
            # A log reader learns nothing from "checkpoint at step N" after every epoch line
            # (each epoch end is saved) or every checkpoint_every steps; what they need is
            # where the run can go on from once this worker is done: the newest checkpoint,
            # said once, just before the run's last line (or when the display closes).
            self._held_checkpoint = event
        elif isinstance(event, TERMINAL_EVENTS):
            self._say_held_checkpoint()
        elif (line := event_line(event, self.facts.run_id or "RUN")) is not None:
            self._write(line)

    def _say_held_checkpoint(self) -> None:
        if self._held_checkpoint is not None:
            self._write(event_line(self._held_checkpoint) or "")
            self._held_checkpoint = None

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    def note(self, message: str) -> None:
        self._write(message)

    def close(self) -> None:
        self._say_held_checkpoint()  # a crash or a detach: where the run could go on from
        self.stream.flush()


class BarDisplay:
    """A rich progress bar on a terminal, with event lines printed above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.facts = RunFacts()
        self.console = Console(file=stream)
        self.bar = Progress(
            TextColumn("{task.fields[doing]}"),
            BarColumn(),
            TextColumn("{task.fields[figures]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self.task = self.bar.add_task("train", total=None, **self._fields())
        self.bar.start()

    def _fields(self) -> dict[str, str]:
        facts = self.facts
        waiting = waiting_words(facts)
        if waiting is not None:
            # Before the first step no figure means anything yet: say what the worker does.
            return {"doing": waiting, "figures": ""}
        validating = "  validating" if facts.phase == "validating" else ""
        figures = [
            step_label(facts),
            f"loss {fmt(facts.last_loss)}",
            f"acc {fmt(facts.last_accuracy)}",
            fmt_rate(facts.images_per_sec),
            # The run's own ETA (engine.run.facts): rich's estimate would count a
            # resumed run's earlier steps as done in no time.
            f"ETA {fmt_duration(facts.eta_seconds())}",
        ]
        return {"doing": f"epoch {epoch_label(facts)}{validating}", "figures": "  ".join(figures)}

    def handle(self, events: list[Event]) -> None:
        for event in events:
            self.facts.fold(event)
            self._show(event)
        facts = self.facts
        self.bar.update(self.task, completed=facts.step, total=facts.total_steps, **self._fields())

    def _show(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            self.note(epoch_line(self.facts, event))
        elif isinstance(event, Checkpoint):
            return  # the bar is enough on a terminal; logs keep the line
        elif (line := event_line(event, self.facts.run_id or "RUN")) is not None:
            self.note(line)

    def note(self, message: str) -> None:
        from rich.text import Text

        self.bar.console.print(Text(message))

    def close(self) -> None:
        self.bar.stop()
