"""The one-line header: run, preset, status, epoch/step, images/s, ETA."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.run_state import RunState

STATUS_STYLES = {
    "starting": "bold yellow",
    "running": "bold green",
    "paused": "bold yellow",
    "waiting": "bold red reverse",
    "finished": "bold cyan",
    "stopped": "bold cyan",
    "failed": "bold red",
    "crashed": "bold red",
}


def format_duration(seconds: float) -> str:
    """``2h05m``, ``3m12s`` or ``45s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class RunHeader(Static):
    """Shows the watched run in one line, or how to start one."""

    def show_idle(self, message: str = "pick a preset, Enter starts it") -> None:
        """No run watched."""
        self._set_state_class("-idle")
        self.update(Text.assemble(("convdeck", "bold"), "  ", (message, "dim")))

    def show_run(self, state: RunState) -> None:
        """Describe ``state``; the status becomes a CSS class too."""
        self._set_state_class(f"-{state.status}")
        self.update(self._describe(state))

    def _set_state_class(self, name: str) -> None:
        # Restyling costs a few ms: touch the classes only when the state changes.
        if not self.has_class(name):
            self.set_classes(name)

    def _describe(self, state: RunState) -> Text:
        parts: list[Text | str] = [
            Text(state.run_id, "bold"),
            state.preset or "?",
            Text(f" {state.status} ", STATUS_STYLES.get(state.status, "")),
        ]
        epochs = f"/{state.epochs}" if state.epochs else ""
        parts.append(f"epoch {state.epoch}{epochs}")
        parts.append(f"step {state.step:,}")
        if state.images_per_sec:
            parts.append(f"{state.images_per_sec:,.0f} img/s")
        eta = state.eta_seconds()
        if eta is not None and state.live:
            parts.append(f"ETA {format_duration(eta)}")
        if state.reason and not state.live or state.status == "waiting":
            parts.append(Text(state.reason or "", "red"))
        line = Text("  ").join(Text(p) if isinstance(p, str) else p for p in parts)
        line.no_wrap = True
        line.overflow = "ellipsis"
        return line
