"""The help screen: ``tui/help.md`` rendered as Markdown (``?`` or F1).

The remedies' rows and keys are filled in from :mod:`engine.remedies`, the one
catalogue, where the page says ``{remedy_rows}`` and ``{remedy_keys}``.
"""

from __future__ import annotations

from importlib import resources

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

from engine.remedies import REMEDIES


def help_text() -> str:
    """The help page shipped with the package, with the remedies of the catalogue."""
    page = resources.files("tui").joinpath("help.md").read_text(encoding="utf-8")
    rows = "\n".join(f"| `{r.key}` | remedy {r.name}: {r.title} | a live run |" for r in REMEDIES.values())
    keys = "".join(r.key for r in REMEDIES.values())
    return page.replace("{remedy_rows}", rows).replace("{remedy_keys}", f"`{keys}`")


class HelpScreen(ModalScreen[None]):
    """Keys and how the app works, scrollable; Escape closes it."""

    BINDINGS = [
        Binding(
            "escape,q,question_mark,f1",
            "dismiss",
            "Close help",
            tooltip="Back to the app",
            id="help.close",
        ),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(help_text(), id="help-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()
