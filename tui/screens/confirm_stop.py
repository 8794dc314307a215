"""Asks before stopping a run (``x``): stopping checkpoints and ends it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static


class ConfirmStopScreen(ModalScreen[bool]):
    """Dismissed with True to stop the run, False to keep it."""

    BINDINGS = [
        Binding(
            "y,x",
            "confirm",
            "Stop the run",
            tooltip="Checkpoint and end the run",
            id="confirm-stop.yes",
        ),
        Binding(
            "n,escape",
            "cancel",
            "Keep it running",
            tooltip="Close this question",
            id="confirm-stop.no",
        ),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(f"Stop run {self.run_id}?", classes="dialog-title")
            yield Static("It saves a checkpoint, then ends. `convdeck resume` continues it later.")
            yield Static("y stop · n keep running", classes="dialog-keys")
        yield Footer()

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
