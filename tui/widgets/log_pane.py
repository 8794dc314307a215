"""The log pane: a run's notable events as readable lines, newest at the bottom."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.binding import Binding

from tui.widgets.diffed import DiffedWidget
from tui.widgets.header import format_duration


def describe_event(event: dict) -> tuple[str, str]:
    """One readable line and a style for an event (steps are not logged)."""
    kind = event.get("type", "?")
    describe = _DESCRIBERS.get(kind)
    if describe is None:
        return f"{kind}", "dim"
    try:
        text, style = describe(event)
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"{kind} (malformed event)", "yellow"
    return " ".join(text.split()), style  # one line: messages may hold newlines


def _number(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "?"


def _devices(event: dict) -> str:
    return ", ".join(map(str, event.get("devices") or [])) or "?"


def _describe_start(event: dict) -> tuple[str, str]:
    """A first start, or a worker that took over the run (after a remedy, a stop, a crash)."""
    pid = f" (pid {event['pid']})" if event.get("pid") else ""
    batch = (event.get("config") or {}).get("train", {}).get("batch_size")
    detail = f"batch {batch}, " if batch else ""
    detail += f"{event.get('steps_per_epoch', '?')} steps/epoch"
    resumed = event.get("resumed_from_step")
    if resumed is not None:
        return f"worker restarted{pid}: goes on from step {resumed}, {detail}", "bold green"
    return f"started on {_devices(event)}{pid}: {event.get('strategy', '?')}, {detail}", "green"


_DESCRIBERS: dict[str, Any] = {
    "run_started": lambda e: _describe_start(e),
    "epoch_end": lambda e: (
        f"epoch {e.get('epoch', '?')} done: loss {_number(e.get('loss'))} "
        f"val_loss {_number(e.get('val_loss'))} val_acc {_number(e.get('val_accuracy'), '.3f')}",
        "",
    ),
    "checkpoint": lambda e: (f"checkpoint at step {e.get('step', '?')}", "dim"),
    "paused": lambda e: ("paused", "yellow"),
    "resumed": lambda e: ("resumed", "green"),
    "oom": lambda e: (
        f"OUT OF MEMORY at step {e.get('step', '?')} (batch {e.get('batch_size', '?')}): "
        f"{e.get('message', '')}",
        "bold red",
    ),
    "remedy_applied": lambda e: (
        f"remedy {e.get('name', '?')}: "
        + ", ".join(
            f"{k} {v[0]} -> {v[1]}"
            for k, v in (e.get("changes") or {}).items()
            if isinstance(v, list) and len(v) == 2
        ),
        "bold green",
    ),
    "nan": lambda e: (f"loss is NaN at step {e.get('step', '?')}", "bold red"),
    "memory_warning": lambda e: (f"memory warning: {e.get('message', '')}", "yellow"),
    "finished": lambda e: (f"finished ({e.get('reason', 'completed')})", "bold cyan"),
    "failed": lambda e: (
        f"FAILED: {e.get('error', '?')}"
        + (f" (traceback: {e['traceback_path']})" if e.get("traceback_path") else ""),
        "bold red",
    ),
    "worker_exit": lambda e: (
        f"worker died: {e.get('message', '?')}",
        "dim" if e.get("final_event") else "bold red",
    ),
    "log": lambda e: (
        str(e.get("message", "")),
        {"warning": "yellow", "error": "red"}.get(str(e.get("level")), ""),
    ),
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

    def add_events(self, events: list[dict]) -> None:
        """Log each notable event (of a long history, the last ``max_lines``)."""
        for event in events:
            if isinstance(event, dict) and isinstance(event.get("time"), (int, float)):
                if self.start_time is None:
                    self.start_time = float(event["time"])
                break
        lines = []
        for event in events[-self.max_lines :]:
            if not isinstance(event, dict):
                continue
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
        shown = [self.lines[i] for i in range(max(0, end - height), max(0, end))]
        for line in shown:
            line.no_wrap = True
            line.overflow = "ellipsis"
        subtitle = f"↓ {self.scrolled_back} newer (End)" if self.scrolled_back else ""
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle
        self.show(Text("\n").join(shown))

    def _stamp(self, event: dict) -> str:
        when = event.get("time")
        if self.start_time is None or not isinstance(when, (int, float)):
            return "         "
        return f"{'+' + format_duration(max(0.0, when - self.start_time)):>8} "
