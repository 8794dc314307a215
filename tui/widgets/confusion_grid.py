"""The confusion matrix as a heat grid: counts in cells, shaded by their share of the row.

Rows are true classes, columns predicted ones. A cell's background deepens
with its count's share of the row (so a rare class's mistakes show as
plainly as a common one's): green on the diagonal, red off it. Only the
block on screen is drawn, one line at a time, so a 1,000-class matrix
pages as fast as a 10-class one; a cursor names the cell under it in full
on the last line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.color import Color
from textual.strip import Strip
from textual.widget import Widget

SHADES = 8
"""Background levels per colour (see _shade)."""
LABEL_MAX = 12
HEADER_NAME = 3
"""The most characters of a class name over its column."""
"""The widest row label; longer class names are cut (the status line gives them whole)."""
HEADER_LINES, STATUS_LINES = 1, 1


@dataclass(frozen=True)
class Confusion:
    """A confusion matrix ready to draw (built off the UI thread: numpy over n x n counts).

    Attributes:
        counts: (n, n) counts, rows true classes, columns predicted.
        shares: each count over its row's total (0 for a class with no examples).
        names: the class names.
        count_width: characters of the widest count (as :func:`compact_count` writes it).
        name_width: characters of the longest name.
    """

    counts: np.ndarray
    shares: np.ndarray
    names: list[str]
    count_width: int
    name_width: int

    @classmethod
    def from_counts(cls, counts: list[list[int]] | np.ndarray, names: list[str]) -> Confusion:
        matrix = np.asarray(counts, dtype=np.int64)
        totals = matrix.sum(axis=1, keepdims=True)
        shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float32), where=totals > 0)
        widest = len(compact_count(int(matrix.max()))) if matrix.size else 1
        return cls(matrix, shares.astype(np.float32), list(names), widest, max(map(len, names), default=1))

    @property
    def classes(self) -> int:
        return len(self.names)


def compact_count(count: int) -> str:
    """A count in at most four characters: 7, 512, 4k, 12k, 512k, 3M."""
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count // 1000}k"
    return f"{min(count // 1_000_000, 999)}M"


class ConfusionGrid(Widget, can_focus=True):
    """The heat grid; :meth:`show` gives it a matrix."""

    COMPONENT_CLASSES = {
        "confusion-grid--hit",
        "confusion-grid--miss",
        "confusion-grid--header",
        "confusion-grid--cursor",
    }
    DEFAULT_CSS = """
    ConfusionGrid { height: 1fr; width: 1fr; }
    ConfusionGrid > .confusion-grid--hit { background: $success; }
    ConfusionGrid > .confusion-grid--miss { background: $error; }
    ConfusionGrid > .confusion-grid--header { color: $text-muted; text-style: bold; }
    ConfusionGrid > .confusion-grid--cursor { text-style: reverse bold; }
    """

    # | key            | moves the cursor                 |
    # |----------------|----------------------------------|
    # | arrows         | one cell                         |
    # | PgUp PgDn      | a page of rows (true classes)    |
    # | [ ]            | a page of columns (predictions)  |
    # | Home End       | first / last class               |
    BINDINGS = [
        Binding("up", "move(-1, 0)", "Up", show=False, tooltip="Previous true class", id="grid.up"),
        Binding("down", "move(1, 0)", "Down", show=False, tooltip="Next true class", id="grid.down"),
        Binding("left", "move(0, -1)", "Left", show=False, tooltip="Previous prediction", id="grid.left"),
        Binding("right", "move(0, 1)", "Right", show=False, tooltip="Next prediction", id="grid.right"),
        Binding("pageup", "page(-1, 0)", "Rows up", show=False, tooltip="A page of rows up", id="grid.page-up"),
        Binding("pagedown", "page(1, 0)", "Rows down", show=False, tooltip="A page of rows down", id="grid.page-down"),
        Binding(
            "left_square_bracket",
            "page(0, -1)",
            "Columns",
            key_display="[ ]",
            tooltip="A page of columns left ([) or right (])",
            id="grid.page-left",
        ),
        Binding(
            "right_square_bracket",
            "page(0, 1)",
            "Columns right",
            show=False,
            tooltip="A page of columns right",
            id="grid.page-right",
        ),
        Binding("home", "jump(0)", "First", show=False, tooltip="The first class", id="grid.home"),
        Binding("end", "jump(-1)", "Last", show=False, tooltip="The last class", id="grid.end"),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.confusion: Confusion | None = None
        self.cursor = (0, 0)
        """(true class, predicted class) under the cursor."""
        self.origin = (0, 0)
        """(first row, first column) on screen."""
        self._styles: dict | None = None

    def show(self, confusion: Confusion) -> None:
        """Draw ``confusion``, the cursor on the first cell."""
        self.confusion = confusion
        self.cursor = self.origin = (0, 0)
        self.refresh(layout=True)

    # -------------------------------------------------------------- geometry

    @property
    def label_width(self) -> int:
        """The row labels' column, with a space after it."""
        return min(LABEL_MAX, self.confusion.name_width if self.confusion else 1) + 1

    @property
    def cell_width(self) -> int:
        """A space, then the widest count or as much of a class name as the header shows.

        Names get up to HEADER_NAME characters, fewer when that lets every
        column fit on screen (the status line names the cursor's cell in full).
        """
        confusion = self.confusion
        if confusion is None or not confusion.classes:
            return 2
        digits, name = confusion.count_width, min(HEADER_NAME, confusion.name_width)
        room = self.size.width - self.label_width
        for shown in range(name, 0, -1):
            if confusion.classes * (max(digits, shown) + 1) <= room:
                return max(digits, shown) + 1
        return max(digits, name) + 1

    @property
    def page(self) -> tuple[int, int]:
        """(rows, columns) on screen at once."""
        rows = max(1, self.size.height - HEADER_LINES - STATUS_LINES)
        columns = max(1, (self.size.width - self.label_width) // self.cell_width)
        classes = self.confusion.classes if self.confusion else 0
        return min(rows, classes) or 1, min(columns, classes) or 1

    # ----------------------------------------------------------------- moves

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "page" and parameters[1:] and parameters[1]:
            # The column keys are in the footer only when there are columns off screen.
            return self.confusion is not None and self.page[1] < self.confusion.classes
        return True

    def action_move(self, rows: int, columns: int) -> None:
        self.move_cursor(self.cursor[0] + rows, self.cursor[1] + columns)

    def action_page(self, rows: int, columns: int) -> None:
        page_rows, page_columns = self.page
        self.move_cursor(self.cursor[0] + rows * page_rows, self.cursor[1] + columns * page_columns, by_page=True)

    def action_jump(self, where: int) -> None:
        last = (self.confusion.classes - 1) if self.confusion else 0
        target = last if where < 0 else 0
        self.move_cursor(target, target)

    def move_cursor(self, row: int, column: int, by_page: bool = False) -> None:
        """Put the cursor on (row, column), clipped to the matrix; scroll so it shows.

        Paging moves the block on screen with the cursor, so a page key shows
        a whole new page rather than one more row.
        """
        if self.confusion is None:
            return
        last = self.confusion.classes - 1
        row, column = min(max(row, 0), last), min(max(column, 0), last)
        page_rows, page_columns = self.page
        top, left = self.origin
        if by_page:
            top += row - self.cursor[0]
            left += column - self.cursor[1]
        top = _keep_in_view(top, row, page_rows, last)
        left = _keep_in_view(left, column, page_columns, last)
        self.cursor, self.origin = (row, column), (top, left)
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.move_cursor(*self.cursor)

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.move_cursor(self.cursor[0] + 3, self.cursor[1])

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.move_cursor(self.cursor[0] - 3, self.cursor[1])

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if self.confusion is None or offset is None:
            return
        row = self.origin[0] + offset.y - HEADER_LINES
        column = self.origin[1] + (offset.x - self.label_width) // self.cell_width
        if offset.y >= HEADER_LINES and offset.x >= self.label_width and row < self.confusion.classes:
            self.move_cursor(row, column)

    # ---------------------------------------------------------------- drawing

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None  # the theme changed: shades are mixed again

    def render_line(self, y: int) -> Strip:
        if self.confusion is None:
            return Strip.blank(self.size.width)
        page_rows, _ = self.page
        if y == 0:
            segments = self._header()
        elif y <= page_rows:
            segments = self._row(self.origin[0] + y - HEADER_LINES)
        elif y == page_rows + HEADER_LINES:
            segments = [Segment(self.status_text())]
        else:
            segments = []
        return Strip(segments).crop_extend(0, self.size.width, self.rich_style)

    def _columns(self) -> range:
        left = self.origin[1]
        return range(left, min(left + self.page[1], self.confusion.classes))

    def _header(self) -> list[Segment]:
        styles, width = self._palette(), self.cell_width
        segments = [Segment(" " * self.label_width, styles["header"])]
        for column in self._columns():
            name = self.confusion.names[column][: width - 1].rjust(width)
            style = styles["cursor"] if column == self.cursor[1] else styles["header"]
            segments.append(Segment(name, style))
        return segments

    def _row(self, row: int) -> list[Segment]:
        if row >= self.confusion.classes:
            return []
        styles, width = self._palette(), self.cell_width
        label = self.confusion.names[row][: self.label_width - 1]
        segments = [
            Segment(label, styles["cursor"] if row == self.cursor[0] else styles["header"]),
            Segment(" " * (self.label_width - len(label)), styles["header"]),
        ]
        counts, shares = self.confusion.counts[row], self.confusion.shares[row]
        for column in self._columns():
            count = int(counts[column])
            text = (compact_count(count) if count else "·").rjust(width)
            style = styles["hit" if row == column else "miss"][_shade(float(shares[column]))]
            if (row, column) == self.cursor:
                style += styles["cursor"]
            segments.append(Segment(text, style))
        return segments

    def status_text(self) -> str:
        """The cell under the cursor in words, and where the page is when it does not all fit."""
        confusion = self.confusion
        row, column = self.cursor
        total = int(confusion.counts[row].sum())
        count = int(confusion.counts[row, column])
        share = f" ({count / total:.1%})" if total else ""
        text = f"true {confusion.names[row]} → predicted {confusion.names[column]}: {count} of {total}{share}"
        page_rows, page_columns = self.page
        if page_rows < confusion.classes or page_columns < confusion.classes:
            top, left = self.origin
            last_column = min(left + page_columns, confusion.classes)
            text += f" · rows {top + 1}–{top + page_rows}, columns {left + 1}–{last_column} of {confusion.classes}"
        return text

    def _palette(self) -> dict:
        """Rich styles: two ramps of SHADES + 1 backgrounds (hit, miss), header, cursor."""
        if self._styles is None:
            base = self.background_colors[1]
            self._styles = {
                "hit": _ramp(base, self.get_component_styles("confusion-grid--hit").background),
                "miss": _ramp(base, self.get_component_styles("confusion-grid--miss").background),
                "header": self.get_component_rich_style("confusion-grid--header", partial=True),
                "cursor": self.get_component_rich_style("confusion-grid--cursor", partial=True),
            }
        return self._styles


def _shade(share: float) -> int:
    """A share's level: on a square-root scale, so a 5% confusion already shows (level 2 of 8)."""
    return math.ceil(math.sqrt(share) * SHADES)


def _ramp(base: Color, full: Color) -> list[Style]:
    """SHADES + 1 cell styles from ``base`` (level 0) to ``full``, with legible text on each."""
    styles = []
    for level in range(SHADES + 1):
        background = base.blend(full, 0.85 * level / SHADES)
        text = background + background.get_contrast_text(0.9 if level else 0.5)
        styles.append(Style(color=text.rich_color, bgcolor=background.rich_color))
    return styles


def _keep_in_view(first: int, cursor: int, page: int, last: int) -> int:
    """The first index on screen, moved as little as needed to show ``cursor``, never past the end."""
    first = min(first, cursor)
    first = max(first, cursor - page + 1)
    return max(0, min(first, last - page + 1))
