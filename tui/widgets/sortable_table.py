"""A table of records sorted by any column: click a header (again: reversed), or ``s`` and ``r``.

The rows keep their raw values; a column's ``format`` only draws them, so
sorting is by the number, never by its text. Missing values sort last
whichever way the table runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable


@dataclass(frozen=True)
class Column:
    """One column: its key, its header, and how a value is drawn."""

    key: str
    label: str
    format: Callable[[Any], str | Text] = str
    numeric: bool = True


def figure(value: float | None) -> Text:
    """A figure in [0, 1] to three places, right-aligned; a dash when there is none."""
    return Text("—" if value is None else f"{value:.3f}", justify="right")


def count(value: int | None) -> Text:
    return Text("—" if value is None else str(value), justify="right")


def difference(value: float | None) -> Text:
    """A signed change, green up and red down."""
    if value is None:
        return Text("—", justify="right")
    style = "green" if value > 0 else "red" if value < 0 else ""
    return Text(f"{value:+.3f}", style=style, justify="right")


class SortableTable(DataTable):
    """Rows of raw values (tuples in column order), drawn by their columns, sorted on request.

    Args:
        columns: the columns, left to right.
    """

    BINDINGS = [
        # Out of the footer (a line over the table names them): it has no room at 80 columns.
        Binding("s", "next_sort", "Sort", show=False, tooltip="Sort by the next column", id="table.sort"),
        Binding("r", "reverse_sort", "Reverse", show=False, tooltip="Reverse the order", id="table.reverse"),
    ]

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.table_columns = list(columns)
        self.records: list[tuple] = []
        self.sort_column: str | None = None
        self.sort_reverse = False

    def set_records(self, records: list[tuple], sort_by: str | None = None, reverse: bool = False) -> None:
        """Show ``records`` sorted by ``sort_by`` (in the order given when None)."""
        self.records = list(records)
        self.sort_by(sort_by, reverse)

    def sort_by(self, column: str | None, reverse: bool = False) -> None:
        """Sort by ``column``; a stable sort, so equal values keep the order they had."""
        self.sort_column, self.sort_reverse = column, reverse
        if column is not None:
            index = self._index(column)
            present = [r for r in self.records if r[index] is not None]
            missing = [r for r in self.records if r[index] is None]
            present.sort(key=lambda record: record[index], reverse=reverse)
            self.records = present + missing
        self._fill()

    def _index(self, key: str) -> int:
        return next(i for i, column in enumerate(self.table_columns) if column.key == key)

    def _fill(self) -> None:
        self.clear(columns=True)
        for column in self.table_columns:
            arrow = ""
            if column.key == self.sort_column:
                arrow = " ▼" if self.sort_reverse else " ▲"
            label = Text(column.label + arrow, justify="right" if column.numeric else "left")
            self.add_column(label, key=column.key)
        self.add_rows(
            ([column.format(value) for column, value in zip(self.table_columns, record, strict=True)])
            for record in self.records
        )

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = str(event.column_key.value)
        self.sort_by(key, reverse=not self.sort_reverse if key == self.sort_column else False)

    def action_next_sort(self) -> None:
        keys = [column.key for column in self.table_columns]
        current = keys.index(self.sort_column) if self.sort_column in keys else -1
        self.sort_by(keys[(current + 1) % len(keys)])

    def action_reverse_sort(self) -> None:
        if self.sort_column is None:
            self.records.reverse()
            self._fill()
        else:
            self.sort_by(self.sort_column, not self.sort_reverse)
