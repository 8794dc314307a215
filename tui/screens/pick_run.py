"""A small dialog that picks one run from a list; dismissed with its id, or None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option


class PickRunScreen(ModalScreen[str | None]):
    """Pick a run.

    Args:
        title: what the choice is for.
        runs: (run id, the line shown for it), in the order to list them.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Choose none", id="pick.cancel")]

    def __init__(self, title: str, runs: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(id="pick-box"):
            yield Static(self.title_text, id="pick-title")
            yield OptionList(*(Option(line, id=run_id) for run_id, line in self.runs), id="pick-options")
        yield Footer()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
