"""The headless progress display of ``convdeck run``: a bar on a terminal, plain lines in a log.

On a terminal a rich progress bar shows epoch, step, loss, accuracy,
images/s and ETA, with a line per finished epoch above it. When stdout is a
file or a pipe the same figures go out as plain lines, one per epoch and one
every few seconds of steps, so a log never holds bar characters or ANSI
codes. ``--json`` prints the events themselves, one JSON object a line.

Imports neither TensorFlow nor Textual.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Protocol, TextIO


class Display(Protocol):
    """What the CLI feeds while it follows a run."""

    def handle(self, events: list[dict]) -> None:
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


class RunProgress:
    """The figures a display shows, folded from the events as they come."""

    def __init__(self) -> None:
        self.epochs: int | None = None
        self.steps_per_epoch: int | None = None
        self.step = 0
        self.epoch = 0
        self.loss: float | None = None
        self.accuracy: float | None = None
        self.images_per_sec: float | None = None
        self.run_id = "RUN"
        self._rate_start: tuple[float, int] | None = None

    @property
    def total_steps(self) -> int | None:
        if self.epochs and self.steps_per_epoch:
            return self.epochs * self.steps_per_epoch
        return None

    def update(self, event: dict) -> None:
        """Take one event; unknown types are ignored."""
        if event["type"] == "run_started":
            self._start(event)
        elif event["type"] == "step":
            self._step(event)
        elif event["type"] == "remedy_applied" and "steps_per_epoch" in event:
            self.steps_per_epoch = _number(event.get("steps_per_epoch")) or self.steps_per_epoch

    def _start(self, event: dict) -> None:
        config = event.get("config") or {}
        self.run_id = str(event.get("run_id") or self.run_id)
        self.epochs = _number(event.get("epochs")) or _number(
            (config.get("train") or {}).get("epochs")
        )
        self.steps_per_epoch = _number(event.get("steps_per_epoch"))
        self.step = _number(event.get("resumed_from_step")) or self.step
        self._rate_start = None

    def _step(self, event: dict) -> None:
        self.step = _number(event.get("step")) or self.step
        self.epoch = _number(event.get("epoch")) or self.epoch
        self.loss = _last(event.get("loss"))
        self.accuracy = _last(event.get("accuracy"))
        self.images_per_sec = _last(event.get("images_per_sec"))
        now = time.monotonic()
        if self._rate_start is None:
            self._rate_start = (now, self.step)

    def eta_seconds(self) -> float | None:
        """Seconds left at the step rate seen since this viewer started, or None."""
        if self._rate_start is None or self.total_steps is None:
            return None
        started, first_step = self._rate_start
        elapsed, done = time.monotonic() - started, self.step - first_step
        if done <= 0 or elapsed <= 0:
            return None
        return max(0, self.total_steps - self.step) * elapsed / done

    def epoch_label(self, epoch: Any = None) -> str:
        epoch = self.epoch if epoch is None else epoch
        return f"{epoch}/{self.epochs}" if self.epochs else str(epoch)

    def step_label(self) -> str:
        total = self.total_steps
        return f"{self.step}/{total}" if total else str(self.step)


def _last(value: Any) -> Any:
    """A field's latest value; a worker may batch several steps as parallel lists."""
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def _number(value: Any) -> Any:
    value = _last(value)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for humans: 4 decimals, '-' when missing."""
    value = _last(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``, or '-'."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def epoch_line(progress: RunProgress, event: dict) -> str:
    """One line for an ``epoch_end`` event."""
    parts = [
        f"epoch {progress.epoch_label(event.get('epoch', progress.epoch))}",
        f"loss {fmt(event.get('loss', progress.loss))}",
        f"accuracy {fmt(event.get('accuracy', progress.accuracy))}",
        f"val_loss {fmt(event.get('val_loss'))}",
        f"val_accuracy {fmt(event.get('val_accuracy'))}",
    ]
    return "  ".join(parts)


def step_line(progress: RunProgress) -> str:
    """One line with the latest step figures, for logs."""
    parts = [
        f"epoch {progress.epoch_label()}",
        f"step {progress.step_label()}",
        f"loss {fmt(progress.loss)}",
        f"accuracy {fmt(progress.accuracy)}",
        f"{fmt(progress.images_per_sec, 0)} img/s",
        f"ETA {fmt_duration(progress.eta_seconds())}",
    ]
    return "  ".join(parts)


def event_line(event: dict, run_id: str = "RUN") -> str | None:
    """A line for an event that is neither a step nor an epoch end, or None to stay quiet."""
    kind = event["type"]
    if kind == "run_started":
        return _started_line(event)
    if kind == "checkpoint":
        return f"checkpoint at step {_last(event.get('step'))}"
    if kind == "memory_warning":
        return f"memory warning: {event.get('message', '')}"
    if kind == "paused":
        # Headless, nobody may be watching: say how to go on.
        return f"paused at step {event.get('step', '?')} (go on: convdeck ctl {run_id} resume)"
    if kind == "resumed":
        return f"resumed at step {event.get('step', '?')}"
    if kind == "oom":
        return _oom_line(event, run_id)
    if kind == "remedy_applied":
        return _remedy_line(event)
    if kind == "nan":
        return f"the loss became NaN at step {event.get('step', '?')}"
    if kind == "log":
        return str(event.get("message", ""))
    return None


def _started_line(event: dict) -> str:
    devices = ", ".join(str(d) for d in event.get("devices") or []) or "?"
    resumed = event.get("resumed_from_step")
    start = f"resumed from step {resumed}" if resumed else "started"
    return f"run {event.get('run_id', '?')} {start} on {devices}" + _distribution(event)


def _distribution(event: dict) -> str:
    """How the global batch splits, for a run on several replicas or workers."""
    replicas, workers = event.get("replicas") or 1, event.get("workers") or 1
    if replicas == 1 and workers == 1:
        return ""
    batch = event.get("per_replica_batch")
    split = f": {replicas} replicas x {batch} = batch {replicas * batch}" if batch else ""
    text = f" ({event.get('strategy', '?')}{split}"
    if workers > 1:
        text += f"; worker {event.get('worker_index', '?')} of {workers}"
        if event.get("chief") is False:
            text += ", the chief's run records steps and checkpoints"
    return text + ")"


def _oom_line(event: dict, run_id: str) -> str:
    names = [_remedy_name(remedy) for remedy in event.get("remedies") or []]
    line = (
        f"out of memory at step {event.get('step', '?')} with batch {event.get('batch_size', '?')}"
    )
    if names:
        line += f"; remedies: {', '.join(names)}"
    if names and event.get("waiting", True):
        line += f"; waiting for one: convdeck ctl {run_id} remedy {names[0]}"
    return line


def _remedy_name(remedy: Any) -> str:
    """An ``oom`` event lists remedies as dicts (name, title, effect); older ones as names."""
    return str(remedy.get("name", "?")) if isinstance(remedy, dict) else str(remedy)


def _remedy_line(event: dict) -> str:
    changes = event.get("changes") or {}
    detail = ", ".join(f"{field} {_old_to_new(change)}" for field, change in changes.items())
    where = f" at step {event['step']}" if "step" in event else ""
    return f"remedy {event.get('name', '?')} applied{where}" + (f": {detail}" if detail else "")


def _old_to_new(change: Any) -> str:
    if isinstance(change, (list, tuple)) and len(change) == 2:
        return f"{change[0]} -> {change[1]}"
    return str(change)


class JsonLinesDisplay:
    """``--json``: each event as one JSON line on stdout, notes on stderr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def handle(self, events: list[dict]) -> None:
        lines = (json.dumps(_strict_json(event), allow_nan=False) + "\n" for event in events)
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
    """Plain lines for a file or a pipe: one per epoch end, one every ``line_every`` s of steps."""

    def __init__(self, stream: TextIO, line_every: float = 5.0) -> None:
        self.stream = stream
        self.line_every = line_every
        self.progress = RunProgress()
        self._last_line = time.monotonic()
        self._unprinted_steps = False

    def handle(self, events: list[dict]) -> None:
        for event in events:
            self.progress.update(event)
            self._show(event)
        if self._unprinted_steps and time.monotonic() - self._last_line >= self.line_every:
            self._write(step_line(self.progress))
            self._unprinted_steps = False

    def _show(self, event: dict) -> None:
        if event["type"] == "step":
            self._unprinted_steps = True
        elif event["type"] == "epoch_end":
            self._write(epoch_line(self.progress, event))
            self._unprinted_steps = False
        elif (line := event_line(event, self.progress.run_id)) is not None:
            self._write(line)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = time.monotonic()

    def note(self, message: str) -> None:
        self._write(message)

    def close(self) -> None:
        self.stream.flush()


class BarDisplay:
    """A rich progress bar on a terminal, with event lines printed above it."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = RunProgress()
        self.console = Console(file=stream)
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[accuracy]}"),
            TextColumn("{task.fields[images_per_sec]} img/s  ETA {task.fields[eta]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self.task = self.bar.add_task("train", total=None, **self._fields())
        self.bar.start()

    def _fields(self) -> dict[str, str]:
        progress = self.progress
        return {
            "epoch": progress.epoch_label(),
            "loss": fmt(progress.loss),
            "accuracy": fmt(progress.accuracy),
            "images_per_sec": fmt(progress.images_per_sec, 0),
            # ETA from this viewer's own step rate: rich's estimate would
            # count a resumed run's earlier steps as done in no time.
            "eta": fmt_duration(progress.eta_seconds()),
        }

    def handle(self, events: list[dict]) -> None:
        for event in events:
            self.progress.update(event)
            self._show(event)
        progress = self.progress
        self.bar.update(
            self.task, completed=progress.step, total=progress.total_steps, **self._fields()
        )

    def _show(self, event: dict) -> None:
        if event["type"] == "epoch_end":
            self.note(epoch_line(self.progress, event))
        elif event["type"] == "checkpoint":
            return  # the bar is enough on a terminal; logs keep the line
        elif (line := event_line(event, self.progress.run_id)) is not None:
            self.note(line)

    def note(self, message: str) -> None:
        from rich.text import Text

        self.bar.console.print(Text(message))

    def close(self) -> None:
        self.bar.stop()
