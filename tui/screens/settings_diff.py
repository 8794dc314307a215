"""The settings that differ between chosen runs, one row a run, with their best figures, sorted by any column."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.run.facts import RunFacts
from engine.run.run_comparison import SettingValue, compare_runs
from tui.runs_columns import MIN_RUN_WIDTH, shorten_at_dash
from tui.widgets.header import STATUS_STYLES
from tui.widgets.sortable_table import Column, SortableTable, count

SETTING_PREFIX = "setting:"
"""Column keys of settings: a config key can never clash with a figure's column."""
SORT_HINT = "s sort by next column · r reverse"


def _setting_left(value: SettingValue | None) -> Text:
    return Text("—" if value is None else value.text)


def _setting_right(value: SettingValue | None) -> Text:
    return Text("—" if value is None else value.text, justify="right")


def _run_id(value: str) -> Text:
    return Text(shorten_at_dash(value, MIN_RUN_WIDTH))


def _accuracy(value: float | None) -> Text:
    # Four places, as the runs screen prints it: the same run reads the same in both.
    return Text("—" if value is None else f"{value:.4f}", justify="right")


def _loss(value: float | None) -> Text:
    return Text("—" if value is None else f"{value:.4f}", justify="right")


def _status(value: str) -> Text:
    return Text(value, STATUS_STYLES.get(value, ""))


# Headers take two lines (a setting's section over its name) so that more columns fit 80 cells.
FIGURE_COLUMNS = (
    Column("best_val_accuracy", "best\nval acc", _accuracy),
    Column("best_epoch", "best\nepoch", count),
    Column("final_loss", "final\nloss", _loss),
    Column("status", "\nstatus", _status, numeric=False),
)


def setting_label(name: str) -> str:
    """``train.batch_size`` as a two-line header: ``train`` over ``batch_size``."""
    section, _, key = name.rpartition(".")
    return f"{section}\n{key}" if section else f"\n{key}"


class SettingsDiffScreen(Screen[None]):
    """A table of ``runs``: their id, each setting that differs among them, and their best figures.

    Args:
        runs: the chosen runs' facts (as the runs screen read them), any number.
    """

    BINDINGS = [
        # s and r (sort, reverse) are the table's own keys; the title line names them.
        Binding("escape", "app.pop_screen", "Back", tooltip="Back to the runs", id="settings_diff.close"),
    ]

    def __init__(self, runs: list[RunFacts]) -> None:
        super().__init__()
        self.comparison = compare_runs(runs)

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="settings-diff-title")
        yield SortableTable(self._columns(), id="settings-diff-table")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(SortableTable)
        table.header_height = 2
        table.fixed_columns = 1  # the run id stays in view while many settings scroll by
        table.set_records(self.comparison.records, sort_by="best_val_accuracy", reverse=True)
        table.focus()

    def _title(self) -> str:
        runs, settings = len(self.comparison.records), len(self.comparison.settings)
        if not settings:
            return f"{runs} runs with the same settings · {SORT_HINT}"
        differ = "setting differs" if settings == 1 else "settings differ"
        return f"{runs} runs · {settings} {differ} · {SORT_HINT}"

    def _columns(self) -> list[Column]:
        settings = []
        for index, name in enumerate(self.comparison.settings):
            numeric = self._numeric(index)
            draw = _setting_right if numeric else _setting_left
            settings.append(Column(f"{SETTING_PREFIX}{name}", setting_label(name), draw, numeric=numeric))
        return [Column("run", "\nrun", _run_id, numeric=False), *settings, *FIGURE_COLUMNS]

    def _numeric(self, index: int) -> bool:
        """A setting right-aligns when every value it has is a number."""
        values = [record[1 + index] for record in self.comparison.records]
        return all(value is None or value.is_number for value in values)
