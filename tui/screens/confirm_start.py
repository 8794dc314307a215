"""Asks before starting a run beside live runs on the same device (see :mod:`tui.live_runs`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from engine.run.facts import RunFacts
from tui.live_runs import describe


class ConfirmStartScreen(ModalScreen[bool]):
    """Dismissed with True to start anyway, False to start nothing.

    Args:
        preset: the preset about to start.
        sharing: the live runs on the device it would train on.
    """

    BINDINGS = [
        Binding("y", "confirm", "Start anyway", tooltip="Start the run beside the live ones", id="confirm-start.yes"),
        Binding("n,escape", "cancel", "Cancel", tooltip="Start nothing", id="confirm-start.no"),
    ]

    def __init__(self, preset: str, sharing: list[RunFacts]) -> None:
        super().__init__()
        self.preset = preset
        self.sharing = sharing

    def compose(self) -> ComposeResult:
        beside = "these runs" if len(self.sharing) > 1 else "a live run"
        with Vertical(classes="dialog"):
            yield Static(f"Start {self.preset} beside {beside}?", classes="dialog-title")
            yield Static("\n".join(describe(facts) for facts in self.sharing))
            yield Static(
                "They train on the same device: the runs share its memory and its time, "
                "so each goes slower and one may run out of memory."
            )
            yield Static("y start anyway · n cancel", classes="dialog-keys")
        yield Footer()

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
