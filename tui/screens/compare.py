"""Two runs' loss curves overlaid in one chart."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.run.history import RunHistory
from tui.chart_keys import ChartKeys, chart_bindings
from tui.widgets.loss_chart import LossChart


class CompareScreen(ChartKeys, Screen[None]):
    """Reads both runs' events in a thread, then overlays their curves."""

    BINDINGS = [
        *chart_bindings("compare", show=True),
        Binding("escape", "app.pop_screen", "Back", tooltip="Back to the runs", id="compare.close"),
    ]

    def __init__(self, engine: Any, run_ids: list[str]) -> None:
        super().__init__()
        self.engine = engine
        self.run_ids = run_ids

    def compose(self) -> ComposeResult:
        yield Static(f"Overlay: {' vs '.join(self.run_ids)}", id="compare-title")
        yield LossChart(id="compare-chart")
        yield Footer()

    def on_mount(self) -> None:
        chart = self.query_one(LossChart)
        chart.placeholder = "reading events…"
        chart.focus()
        self._load()

    @work(thread=True, exclusive=True, group="compare-load", exit_on_error=False)
    def _load(self) -> None:
        overlays = []
        for run_id in self.run_ids:
            history = RunHistory()
            try:
                run = self.engine.find_run(run_id)
                batch: list[dict] = []
                for event in self.engine.read_events(run):
                    batch.append(event)
                    if len(batch) >= 4096:
                        history.ingest(batch)
                        batch = []
                history.ingest(batch)
            except Exception as error:  # noqa: BLE001 - show it, do not crash
                self.app.call_from_thread(self.notify, f"{run_id}: {error}", severity="error")
            overlays.append((run_id, history))
        self.app.call_from_thread(self._show, overlays)

    def _show(self, overlays: list) -> None:
        chart = self.query_one(LossChart)
        chart.placeholder = "no steps in these runs yet"
        chart.set_history(None, overlays)
