"""Asks what to do with a live run when quitting: stop it, or leave it running."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static


class ConfirmQuitScreen(ModalScreen[str | None]):
    """Dismissed with "stop", "leave", or None to stay."""

    BINDINGS = [
        Binding(
            "l",
            "choose('leave')",
            "Leave it running",
            tooltip="Quit; the run goes on",
            id="confirm-quit.leave",
        ),
        Binding(
            "s",
            "choose('stop')",
            "Stop it",
            tooltip="Stop the run (checkpoint), then quit",
            id="confirm-quit.stop",
        ),
        Binding("escape,n", "choose('')", "Stay", tooltip="Do not quit", id="confirm-quit.stay"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Run {self.run_id} is still training.", classes="dialog-title")
            yield Static(
                f"Leave it running and come back with `convdeck attach {self.run_id}`, "
                "or stop it now."
            )
            yield Static("l leave running · s stop it · esc stay", classes="dialog-keys")
        yield Footer()

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
