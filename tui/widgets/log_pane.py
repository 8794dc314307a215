"""The log pane: a run's notable events as readable lines, newest at the bottom."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.binding import Binding

from engine.run.protocol import (
    Checkpoint,
    EpochEnd,
    Event,
    Failed,
    Finished,
    Log,
    MemoryWarning,
    Nan,
    Oom,
    Paused,
    RemedyApplied,
    Resumed,
    RunStarted,
    WorkerExit,
)
from tui.fit import clip_text
from tui.widgets.diffed import DiffedWidget
from tui.widgets.header import format_duration


def describe_event(event: Event) -> tuple[str, str]:
    """One readable line and a style for an event (steps are not logged)."""
    describe = _DESCRIBERS.get(type(event))
    if describe is None:
        return event.type, "dim"
    text, style = describe(event)
    return " ".join(text.split()), style  # one line: messages may hold newlines


def _number(value: float | None, spec: str = ".4f") -> str:
    return "?" if value is None else format(value, spec)


def _known(value: object) -> str:
    return "?" if value is None else str(value)


def _describe_start(event: RunStarted) -> tuple[str, str]:
    """A first start, or a worker that took over the run (after a remedy, a stop, a crash)."""
    pid = f" (pid {event.pid})" if event.pid else ""
    train = event.config.get("train")
    batch = train.get("batch_size") if isinstance(train, dict) else None
    detail = f"batch {batch}, " if batch else ""
    detail += f"{_known(event.steps_per_epoch)} steps/epoch"
    if event.resumed_from_step is not None:
        goes_on = f"goes on from step {event.resumed_from_step}"
        return f"worker restarted{pid}: {goes_on}, {detail}", "bold green"
    devices = ", ".join(event.devices) or "?"
    return f"started on {devices}{pid}: {event.strategy or '?'}, {detail}", "green"


def _describe_epoch_end(event: EpochEnd) -> tuple[str, str]:
    return (
        f"epoch {_known(event.epoch)} done: loss {_number(event.loss)} "
        f"val_loss {_number(event.val_loss)} val_acc {_number(event.val_accuracy, '.3f')}",
        "",
    )


def _describe_remedy(event: RemedyApplied) -> tuple[str, str]:
    changes = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in event.changes.items())
    return f"remedy {event.name or '?'}: {changes}", "bold green"


def _describe_failed(event: Failed) -> tuple[str, str]:
    where = f" (traceback: {event.traceback_path})" if event.traceback_path else ""
    return f"FAILED: {event.error or '?'}{where}", "bold red"


_DESCRIBERS: dict[type, Callable[[Any], tuple[str, str]]] = {
    RunStarted: _describe_start,
    EpochEnd: _describe_epoch_end,
    Checkpoint: lambda e: (f"checkpoint at step {_known(e.step)}", "dim"),
    Paused: lambda e: ("paused", "yellow"),
    Resumed: lambda e: ("resumed", "green"),
    Oom: lambda e: (
        f"OUT OF MEMORY at step {_known(e.step)} (batch {_known(e.batch_size)}): {e.message}",
        "bold red",
    ),
    RemedyApplied: _describe_remedy,
    Nan: lambda e: (f"loss is NaN at step {_known(e.step)}", "bold red"),
    MemoryWarning: lambda e: (f"memory warning: {e.message}", "yellow"),
    Finished: lambda e: (f"finished ({e.reason})", "bold cyan"),
    Failed: _describe_failed,
    WorkerExit: lambda e: (
        f"worker died: {e.message or '?'}",
        "dim" if e.final_event else "bold red",
    ),
    Log: lambda e: (e.message, {"warning": "yellow", "error": "red"}.get(e.level, "")),
}


class LogPane(DiffedWidget, can_focus=True):
    """Readable event lines stamped with the time since the run started, newest at the bottom.

    It shows the last lines that fit and scrolls back with the arrow keys when
    focused. Not a ``RichLog``: every write to one lays the whole screen out
    again, which a long run's history pays for a thousand times.
    """

    BORDER_TITLE = "Log"
    BINDINGS = [
        Binding("up", "scroll_back(1)", "Older", show=False, tooltip="One line back", id="log.up"),
        Binding(
            "down", "scroll_back(-1)", "Newer", show=False, tooltip="One line on", id="log.down"
        ),
        Binding("pageup", "scroll_back(0.9)", "Page up", tooltip="A page back", id="log.page-up"),
        Binding(
            "pagedown",
            "scroll_back(-0.9)",
            "Page down",
            tooltip="A page on",
            id="log.page-down",
        ),
        Binding("end", "newest", "Newest", tooltip="Back to the newest line", id="log.newest"),
    ]

    def __init__(self, max_lines: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_lines = max_lines
        self.lines: deque[Text] = deque(maxlen=max_lines)
        self.scrolled_back = 0
        """Lines between the newest and the bottom line shown (0: following)."""
        self.start_time: float | None = None
        self.history: deque[str] = deque(maxlen=max_lines)
        """The plain text of every line written, for tests and copy-out."""

    def add_events(self, events: list[Event]) -> None:
        """Log each notable event (of a long history, the last ``max_lines``)."""
        if events and self.start_time is None:
            self.start_time = events[0].time
        lines = []
        for event in events[-self.max_lines :]:
            text, style = describe_event(event)
            self.history.append(text)
            lines.append(Text.assemble((self._stamp(event), "dim"), (text, style)))
        self._write(lines)

    def note(self, text: str, style: str = "") -> None:
        """A line from the app itself (a refused key, a failed command)."""
        self.history.append(text)
        self._write([Text.assemble(("         ", "dim"), (text, style))])

    def clear(self) -> None:
        """Forget every line."""
        self.lines.clear()
        self.scrolled_back = 0
        self._redraw()

    def action_scroll_back(self, pages_or_lines: float) -> None:
        """Scroll back (positive) or on; a fraction is a share of a page."""
        lines = pages_or_lines
        if abs(lines) < 1:
            lines = lines * max(1, self.content_size.height)
        most = max(0, len(self.lines) - self.content_size.height)
        self.scrolled_back = max(0, min(most, self.scrolled_back + int(lines)))
        self._redraw()

    def action_newest(self) -> None:
        """Follow the newest line again."""
        self.scrolled_back = 0
        self._redraw()

    def on_resize(self) -> None:
        self._redraw()

    def _write(self, lines: list[Text]) -> None:
        if not lines:
            return
        self.lines.extend(lines)
        if self.scrolled_back:
            # Reading older lines: keep them in place while new ones arrive.
            self.scrolled_back = min(self.scrolled_back + len(lines), len(self.lines) - 1)
        self._redraw()

    def _redraw(self) -> None:
        height = max(1, self.content_size.height)
        end = len(self.lines) - self.scrolled_back
        width = self.content_size.width or 1000
        # A long line ends at a word with "…" (the whole of it is in `history` and worker.log).
        shown = [clip_text(self.lines[i], width) for i in range(max(0, end - height), max(0, end))]
        for line in shown:
            line.no_wrap = True
            line.overflow = "ellipsis"
        subtitle = f"↓ {self.scrolled_back} newer (End)" if self.scrolled_back else ""
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle
        self.show(Text("\n").join(shown))

    def _stamp(self, event: Event) -> str:
        if self.start_time is None:
            return "         "
        return f"{'+' + format_duration(max(0.0, event.time - self.start_time)):>8} "
