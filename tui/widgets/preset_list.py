"""The preset list: filter with ``/``, Enter starts the highlighted preset.

Enter in the filter only takes the cursor to the best match in the list
(the config pane shows it): a run starts from the list, never from typing.

A preset that failed to load is listed in red with its error, not hidden;
the others stay usable.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from tui.messages import PresetChosen, PresetHighlighted

DEFAULT_PRESET = "lenet5-digits"


class PresetFilter(Input):
    """The filter line; Escape clears it and Down goes to the list."""

    BINDINGS = [
        Binding(
            "escape",
            "clear_filter",
            "Clear filter",
            tooltip="Clear the filter and go to the list",
            id="preset-filter.clear",
        ),
        Binding(
            "down",
            "to_list",
            "To list",
            show=False,
            tooltip="Move to the preset list",
            id="preset-filter.to-list",
        ),
    ]

    def action_clear_filter(self) -> None:
        self.value = ""
        self.action_to_list()

    def action_to_list(self) -> None:
        self.parent.query_one(OptionList).focus()


class PresetOptions(OptionList):
    """The option list, with Enter described as what it does here."""

    BINDINGS = [
        Binding(
            "enter", "select", "Start", tooltip="Start a run of this preset", id="presets.start"
        ),
    ]


class PresetList(Vertical):
    """Filter input above an option list of presets."""

    BORDER_TITLE = "Presets"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.presets: list[Any] = []
        self._shown: list[Any] = []

    def compose(self) -> ComposeResult:
        yield PresetFilter(placeholder="/ filter presets", id="preset-filter", compact=True)
        yield PresetOptions(id="preset-options")

    def set_presets(self, presets: list[Any], highlight: str = DEFAULT_PRESET) -> None:
        """Show ``presets``, with ``highlight`` under the cursor."""
        self.presets = sorted(presets, key=lambda p: p.name)
        self._refill(highlight)

    @property
    def highlighted(self) -> Any | None:
        """The preset under the cursor, if any."""
        options = self.query_one(OptionList)
        index = options.highlighted
        return self._shown[index] if index is not None and index < len(self._shown) else None

    def focus_filter(self) -> None:
        """Put the cursor in the filter line."""
        self.query_one(PresetFilter).focus()

    def _refill(self, highlight: str | None) -> None:
        needle = self.query_one(PresetFilter).value.strip().lower()
        matching = [p for p in self.presets if _rank(p, needle) is not None]
        self._shown = sorted(matching, key=lambda p: (_rank(p, needle), p.name))
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(_prompt(p), id=p.name) for p in self._shown])
        names = [p.name for p in self._shown]
        if self._shown:
            options.highlighted = names.index(highlight) if highlight in names else 0
        self.set_class(not self._shown, "-empty")

    @on(Input.Changed, "#preset-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        current = self.highlighted
        if event.value.strip():
            self._refill(None)  # the best match, as typed: Enter goes to it
        else:
            self._refill(current.name if current else DEFAULT_PRESET)

    @on(Input.Submitted, "#preset-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        # The match is chosen, not started: Enter again in the list (or the start key) starts it.
        event.stop()
        self.query_one(OptionList).focus()
        if self.highlighted is not None:
            self.post_message(PresetHighlighted(self.highlighted))

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if self.highlighted is not None:
            self.post_message(PresetHighlighted(self.highlighted))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if self.highlighted is not None:
            self.post_message(PresetChosen(self.highlighted))


def _rank(preset: Any, needle: str) -> int | None:
    """How well ``preset`` matches the filter: 0 name starts with it, 1 name holds it,
    2 description holds it, None not at all (typing "len" puts lenet5 before GoogLeNet)."""
    name = preset.name.lower()
    if not needle or name.startswith(needle):
        return 0
    if needle in name:
        return 1
    if needle in (preset.description or "").lower():
        return 2
    return None


def _prompt(preset: Any) -> Text:
    if preset.error:
        return Text.assemble((preset.name, "red"), (" ⚠ broken", "bold red"))
    suffix = (" (user)", "dim") if preset.source == "user" else ("", "")
    return Text.assemble(preset.name, suffix)
