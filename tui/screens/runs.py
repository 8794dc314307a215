"""The runs screen: every run with its status; open one, overlay their curves, or compare their settings."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.run.facts import RunFacts
from tui.runs_columns import Layout, cell_texts, choose_layout, shorten_at_dash
from tui.widgets.header import STATUS_STYLES

MARK = "●"
TITLE = "Runs · Enter open · space mark · c overlay curves · d compare settings"


class RunsScreen(Screen[str | None]):
    """Dismissed with the run id to open, or None.

    Any number of runs can be marked; ``c`` overlays their loss curves and
    ``d`` shows a table of the settings that differ between them. With fewer
    than two marked, the run under the cursor joins them.
    """

    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="Watch this run (attach if it is live)", id="runs.open"),
        Binding(
            "space",
            "mark",
            "Mark",
            tooltip="Mark or unmark this run for the overlay and the comparison",
            id="runs.mark",
        ),
        Binding(
            "c",
            "compare",
            "Overlay",
            tooltip="Overlay the loss curves of the marked runs",
            id="runs.compare",
        ),
        Binding(
            "d",
            "compare_settings",
            "Compare",
            tooltip="A table of the settings that differ between the marked runs, with their best figures",
            id="runs.compare_settings",
        ),
        Binding("e", "eval", "Eval", tooltip="The Eval view of this run", id="runs.eval"),
        # Out of the footer, which has no room for it at 80 columns (help and the palette name it).
        Binding("f5", "reload", "Reload", show=False, tooltip="Read the run list again", id="runs.reload"),
        Binding("escape,o", "close", "Back", tooltip="Back to the main screen", id="runs.close"),
    ]

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine
        self.runs: list[RunFacts] = []
        self.marked: list[str] = []
        self.columns_layout: Layout | None = None
        self._now = 0.0

    def compose(self) -> ComposeResult:
        yield Static(TITLE, id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.action_reload()

    def on_resize(self) -> None:
        if self.runs:
            self._fill()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="runs-list", exit_on_error=False)
    def _load(self) -> None:
        try:
            runs = self.engine.list_runs()
            now = self.engine.clock()
        except Exception as error:  # noqa: BLE001 - show it, do not crash
            self.app.call_from_thread(self.notify, f"cannot list runs: {error}", severity="error")
            return
        self.app.call_from_thread(self.show_runs, runs, now)

    def show_runs(self, runs: list[RunFacts], now: float) -> None:
        """Fill the table, newest first; ``now`` (the engine's clock) says which start was today."""
        self._now = now
        self.runs = sorted(runs, key=lambda r: r.started or 0, reverse=True)
        known = {run.run_id for run in self.runs}
        self.marked = [run_id for run_id in self.marked if run_id in known]
        self._fill()
        if not self.runs:
            self.query_one("#runs-title", Static).update("No runs yet. Escape, then Enter starts one.")

    def _fill(self) -> None:
        """Lay the columns out for the screen's width and draw every row, keeping the cursor."""
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        texts = [cell_texts(run, self._now) for run in self.runs]
        self.columns_layout = choose_layout(texts, self.size.width or self.app.size.width)
        table.clear(columns=True)
        for column in self.columns_layout.columns:
            label = Text(column.label, justify="right" if column.numeric else "left")
            # The mark column keeps its glyph's width when no run is marked yet: a mark is drawn in place.
            width = len(MARK) if column.key == "mark" else None
            table.add_column(label, key=column.key, width=width)
        for run, text in zip(self.runs, texts, strict=True):
            table.add_row(*self._row(run, text), key=run.run_id)
        if self.runs:
            table.move_cursor(row=min(cursor, len(self.runs) - 1))

    def _row(self, run: RunFacts, texts: dict[str, str]) -> list[Text]:
        assert self.columns_layout is not None
        cells = []
        for column in self.columns_layout.columns:
            text = texts[column.key]
            if column.key == "mark":
                cells.append(self._mark(run.run_id))
            elif column.key == "run":
                cells.append(Text(shorten_at_dash(text, self.columns_layout.run_width)))
            elif column.key == "status":
                cells.append(Text(text, STATUS_STYLES.get(run.status, "")))
            else:
                cells.append(Text(text, justify="right" if column.numeric else "left"))
        return cells

    def _mark(self, run_id: str) -> Text:
        return Text(MARK if run_id in self.marked else "", "bold")

    def _current(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.runs or table.cursor_row is None or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row].run_id

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # The table takes Enter for itself and reports the row: same as "open".
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        run_id = self._current()
        if run_id:
            self.dismiss(run_id)

    def action_mark(self) -> None:
        """Mark or unmark the run under the cursor, and step to the next one."""
        run_id = self._current()
        if run_id is None:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked.append(run_id)
        table = self.query_one(DataTable)
        table.update_cell(run_id, "mark", self._mark(run_id))  # one cell, not the whole list again
        table.action_cursor_down()

    def chosen(self) -> list[str]:
        """The marked runs, in the order marked; the one under the cursor joins when fewer than two are."""
        chosen = list(self.marked)
        current = self._current()
        if len(chosen) < 2 and current and current not in chosen:
            chosen.append(current)
        return chosen

    def action_compare(self) -> None:
        from tui.screens.compare import CompareScreen

        chosen = self.chosen()
        if len(chosen) < 2:
            self.notify("Mark two runs or more with space, then press c.", severity="warning")
            return
        self.app.push_screen(CompareScreen(self.engine, chosen))

    def action_compare_settings(self) -> None:
        from tui.screens.settings_diff import SettingsDiffScreen

        chosen = self.chosen()
        if len(chosen) < 2:
            self.notify("Mark two runs or more with space, then press d.", severity="warning")
            return
        by_id = {run.run_id: run for run in self.runs}
        self.app.push_screen(SettingsDiffScreen([by_id[run_id] for run_id in chosen]))

    def action_eval(self) -> None:
        from tui.screens.eval import EvalScreen

        run_id = self._current()
        if run_id:
            self.app.push_screen(EvalScreen(self.engine, run_id))

    def action_close(self) -> None:
        self.dismiss(None)
