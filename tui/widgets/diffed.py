"""A widget whose redraws send only the cells that changed.

Textual repaints a refreshed widget whole: every cell of a chart goes down
the wire again even when only its last column moved. Over a slow ssh link
that is most of the bytes. :class:`DiffedWidget` keeps the lines it drew,
lays out the new content, and refreshes only the spans of cells that differ,
so a steady chart, header or GPU panel costs tens of bytes a redraw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.cells import cell_len
from textual.geometry import Region
from textual.strip import Strip
from textual.visual import Visual, visualize
from textual.widget import Widget

GAP = 6
"""Unchanged cells between two changed spans of a line below which they are sent as one."""


def line_cells(strip: Strip) -> list[Any] | None:
    """One (character, style) per cell; None when a wide character spans two cells."""
    cells: list[Any] = []
    for text, style, control in strip:
        if control:
            continue
        if cell_len(text) != len(text):
            return None
        cells.extend((char, style) for char in text)
    return cells


def changed_spans(old: Strip, new: Strip, gap: int = GAP) -> Iterator[tuple[int, int]]:
    """(start, end) cell ranges where ``new`` differs from ``old``; end is exclusive."""
    before, after = line_cells(old), line_cells(new)
    if before is None or after is None or len(before) != len(after):
        if old.text != new.text or before != after:
            yield 0, max(old.cell_length, new.cell_length)
        return
    start = end = None
    for index, (a, b) in enumerate(zip(before, after, strict=True)):
        if a == b:
            continue
        if start is None:
            start = index
        elif index - end > gap:
            yield start, end
            start = index
        end = index + 1
    if start is not None:
        yield start, end


def changed_regions(old: list[Strip], new: list[Strip]) -> Iterator[Region]:
    """The regions (content coordinates) to repaint to turn ``old`` into ``new``."""
    for y, (before, after) in enumerate(zip(old, new, strict=True)):
        if before is after:
            continue
        for start, end in changed_spans(before, after):
            yield Region(start, y, end - start, 1)


class DiffedWidget(Widget):
    """A widget that shows a renderable through :meth:`show`, repainting only what changed.

    Subclasses call :meth:`show` with their content instead of implementing
    ``render``. A resize or a style change repaints everything once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._content: Any = ""
        self._strips: list[Strip] = []
        self._strips_size: tuple[int, int] | None = None
        self.cells_refreshed = 0
        """Cells sent for repaint so far, for tests and benchmarks."""

    def show(self, content: Any) -> None:
        """Make ``content`` (a rich renderable) the widget's content and repaint the difference."""
        self._content = content
        width, height = self.size
        if not (width and height) or self._strips_size != (width, height):
            self._strips_size = None
            self.refresh()
            return
        old, self._strips = self._strips, self._lay_out(width, height)
        regions = list(changed_regions(old, self._strips))
        self.cells_refreshed += sum(region.area for region in regions)
        if regions:
            self.refresh(*regions)

    def render(self) -> Any:
        """The content last given to :meth:`show` (Textual paints through :meth:`render_line`)."""
        return self._content

    def _lay_out(self, width: int, height: int) -> list[Strip]:
        visual = visualize(self, self._content, markup=False)
        strips = Visual.to_strips(self, visual, width, height, self.visual_style, pad=True)
        blank = Strip.blank(width, self.visual_style.rich_style)
        return [strip.extend_cell_length(width) for strip in strips] + [blank] * (
            height - len(strips)
        )

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._strips_size != (width, height):
            self._strips = self._lay_out(width, height)
            self._strips_size = (width, height)
            self.cells_refreshed += width * height
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.visual_style.rich_style)

    def notify_style_update(self) -> None:
        # Colours may have changed (focus, a state class): lay out again on the next paint.
        super().notify_style_update()
        self._strips_size = None
