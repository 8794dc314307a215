"""The runs screen: every run with its status; open one, or overlay two loss curves."""

from __future__ import annotations

import datetime
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.run.facts import RunFacts
from tui.widgets.header import STATUS_STYLES

COLUMNS = ("", "run", "preset", "model", "status", "epoch/step", "last loss", "started")


class RunsScreen(Screen[str | None]):
    """Dismissed with the run id to open, or None."""

    BINDINGS = [
        Binding(
            "enter", "open", "Open", tooltip="Watch this run (attach if it is live)", id="runs.open"
        ),
        Binding(
            "space",
            "mark",
            "Mark",
            tooltip="Mark this run for the overlay (two runs)",
            id="runs.mark",
        ),
        Binding(
            "c",
            "compare",
            "Overlay",
            tooltip="Overlay the loss curves of the marked runs",
            id="runs.compare",
        ),
        Binding("e", "eval", "Eval", tooltip="The Eval view of this run", id="runs.eval"),
        Binding("f5", "reload", "Reload", tooltip="Read the run list again", id="runs.reload"),
        Binding("escape,o", "close", "Back", tooltip="Back to the main screen", id="runs.close"),
    ]

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine
        self.runs: list[RunFacts] = []
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Runs  ·  Enter open · space mark two · c overlay them", id="runs-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="runs-list", exit_on_error=False)
    def _load(self) -> None:
        try:
            runs = self.engine.list_runs()
        except Exception as error:  # noqa: BLE001 - show it, do not crash
            self.app.call_from_thread(self.notify, f"cannot list runs: {error}", severity="error")
            return
        self.app.call_from_thread(self.show_runs, runs)

    def show_runs(self, runs: list[RunFacts]) -> None:
        """Fill the table, newest first."""
        self.runs = sorted(runs, key=lambda r: r.started or 0, reverse=True)
        table = self.query_one(DataTable)
        table.clear()
        for run in self.runs:
            table.add_row(*self._row(run), key=run.run_id)
        if not self.runs:
            self.query_one("#runs-title", Static).update(
                "No runs yet. Escape, then Enter starts one."
            )

    def _row(self, run: RunFacts) -> tuple:
        started = (
            datetime.datetime.fromtimestamp(run.started).strftime("%Y-%m-%d %H:%M")
            if run.started  # RunFacts keeps only a finite start time
            else ""
        )
        loss = f"{run.last_loss:.4f}" if run.last_loss is not None else ""
        mark = "●" if run.run_id in self.marked else ""
        return (
            mark,
            run.run_id,
            run.preset,
            run.model,
            Text(run.status, STATUS_STYLES.get(run.status, "")),
            f"{run.epoch}/{run.step}",
            loss,
            started,
        )

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
        run_id = self._current()
        if run_id is None:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked = (self.marked + [run_id])[-2:]
        self.show_runs(self.runs)

    def action_compare(self) -> None:
        from tui.screens.compare import CompareScreen

        chosen = list(self.marked)
        current = self._current()
        if len(chosen) < 2 and current and current not in chosen:
            chosen.append(current)
        if len(chosen) < 2:
            self.notify("Mark two runs with space, then press c.", severity="warning")
            return
        self.app.push_screen(CompareScreen(self.engine, chosen[:2]))

    def action_eval(self) -> None:
        from tui.screens.eval import EvalScreen

        run_id = self._current()
        if run_id:
            self.app.push_screen(EvalScreen(self.engine, run_id))

    def action_close(self) -> None:
        self.dismiss(None)
