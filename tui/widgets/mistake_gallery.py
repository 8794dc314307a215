"""The worst mistakes as pictures, each with its true class, the prediction and its confidence.

The pictures are the PNGs ``convdeck eval`` writes beside ``eval.json``, one
per entry of the report's mistakes list, named by
:func:`engine.evaluation.mistake_image_path`. They are drawn by a
textual-image widget (:mod:`tui.widgets.term_image` chooses which).
"""

from __future__ import annotations

from pathlib import Path

from textual.containers import ItemGrid, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from engine.evaluation import EvalReport, Mistake, mistake_image_path

CARD_WIDTH = 14
"""A card's columns: a 12 x 6-cell picture (square on a 1:2 cell) and its padding."""


class MistakeGallery(VerticalScroll):
    """A grid of mistake cards, as many a row as the width holds; scrolls."""

    def show(self, run_dir: Path, report: EvalReport, image_class: type[Widget]) -> None:
        """Show ``report``'s mistakes, drawn with ``image_class`` (a textual-image widget)."""
        self.remove_children()
        names = report.class_names
        if not report.mistakes:
            self.mount(Static("No mistakes: every example was classified right.", classes="gallery-note"))
            return
        self.mount(Static("true → predicted, confidence", classes="gallery-note"))
        cards = [
            _card(mistake_image_path(run_dir, rank, mistake), mistake, names, image_class)
            for rank, mistake in enumerate(report.mistakes)
        ]
        self.mount(ItemGrid(*cards, min_column_width=CARD_WIDTH, classes="gallery-grid"))


def _card(path: Path, mistake: Mistake, names: list[str], image_class: type[Widget]) -> Vertical:
    true, predicted = _name(names, mistake.true), _name(names, mistake.predicted)
    caption = Static(f"{true} → {predicted}\n{mistake.confidence:.1%}", classes="mistake-caption")
    card = Vertical(_picture(path, image_class), caption, classes="mistake-card")
    card.tooltip = (
        f"example {mistake.example}: a {true}, taken for a {predicted} with {mistake.confidence:.1%} confidence"
    )
    return card


def _picture(path: Path, image_class: type[Widget]) -> Widget:
    """The picture, or a line saying why there is none (an older evaluation, a file gone or damaged)."""
    if not path.exists():
        return Static("no picture", classes="mistake-image -missing")
    try:
        return image_class(path, classes="mistake-image")
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for a damaged file
        return Static(f"unreadable: {type(error).__name__}", classes="mistake-image -missing")


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)
