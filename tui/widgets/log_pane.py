"""The log pane: a run's notable events as readable lines, newest at the bottom."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from tui.widgets.header import format_duration


def describe_event(event: dict) -> tuple[str, str]:
    """One readable line and a style for an event (steps are not logged)."""
    kind = event.get("type", "?")
    describe = _DESCRIBERS.get(kind)
    if describe is None:
        return f"{kind}", "dim"
    try:
        return describe(event)
    except (TypeError, ValueError, KeyError, AttributeError):
        return f"{kind} (malformed event)", "yellow"


def _number(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "?"


def _devices(event: dict) -> str:
    return ", ".join(map(str, event.get("devices") or [])) or "?"


_DESCRIBERS: dict[str, Any] = {
    "run_started": lambda e: (
        f"started {e.get('run_id', '')} pid {e.get('pid', '?')} on {_devices(e)}"
        f" ({e.get('strategy', '?')}, {e.get('steps_per_epoch', '?')} steps/epoch)",
        "green",
    ),
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
    "log": lambda e: (
        str(e.get("message", "")),
        {"warning": "yellow", "error": "red"}.get(str(e.get("level")), ""),
    ),
}


class LogPane(RichLog):
    """Readable event lines stamped with the time since the run started."""

    BORDER_TITLE = "Log"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, auto_scroll=True, **kwargs)
        self.start_time: float | None = None
        self.history: deque[str] = deque(maxlen=1000)
        """The plain text of every line written, for tests and copy-out."""

    def add_events(self, events: list[dict]) -> None:
        """Log each notable event."""
        for event in events:
            if not isinstance(event, dict):
                continue
            if self.start_time is None and isinstance(event.get("time"), (int, float)):
                self.start_time = float(event["time"])
            text, style = describe_event(event)
            self.history.append(text)
            self.write(Text.assemble((self._stamp(event), "dim"), (text, style)))

    def note(self, text: str, style: str = "") -> None:
        """A line from the app itself (a refused key, a failed command)."""
        self.history.append(text)
        self.write(Text.assemble(("         ", "dim"), (text, style)))

    def _stamp(self, event: dict) -> str:
        when = event.get("time")
        if self.start_time is None or not isinstance(when, (int, float)):
            return "         "
        return f"{'+' + format_duration(max(0.0, when - self.start_time)):>8} "
