"""The learning-rate range test of a config, drawn as it runs; Enter takes the suggested rate.

The test runs in a process of its own (:func:`engine.run.lr_find.find_learning_rate`;
the UI never loads TensorFlow), waited on in a thread worker. Its points come
back through ``call_from_thread`` and only mark the curve dirty; a timer
redraws it at most :data:`REDRAWS_PER_SECOND` times a second. The screen is
dismissed with the suggested rate (Enter), or with None (Escape, which also
ends a test still under way).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.config import RunConfig
from engine.errors import ConfigError
from engine.lr_range import DEFAULT_END, DEFAULT_START, DEFAULT_STEPS
from engine.run.lr_find import STOP_REASONS, CurvePoint, RangeTest, find_learning_rate
from tui.lr_curve import draw_curve
from tui.terminal import one_line

REDRAWS_PER_SECOND = 4.0

FindRate = Callable[..., RangeTest]
"""``find_learning_rate``'s shape: (config, steps, start, end, *, on_point=, on_start=) -> RangeTest."""


class LrFindScreen(Screen[float | None]):
    """The range test of ``config``; dismissed with the suggested rate, or None.

    Args:
        config: the config to test (the config pane's, as it would start).
        find: runs the test (tests hand a fake; the real one starts a process).
        steps: steps from ``start`` to ``end``.
        start: the first rate.
        end: the last rate.
    """

    # | key   | does                                   | when             |
    # |-------|----------------------------------------|------------------|
    # | enter | back, with the suggested rate           | a suggestion     |
    # | r     | run the test again                      | not running      |
    # | escape| back, no rate (ends a test under way)  | always           |
    BINDINGS = [
        Binding(
            "enter",
            "use",
            "Use rate",
            tooltip="Back to the config with train.learning_rate set to the suggestion",
            id="lr-find.use",
        ),
        Binding("r", "again", "Run again", tooltip="Run the range test again", id="lr-find.again"),
        Binding("escape", "close", "Back", tooltip="Back, rate unchanged (ends a test under way)", id="lr-find.close"),
    ]

    DEFAULT_CSS = """
    LrFindScreen #lr-find-chart { height: 1fr; }
    LrFindScreen #lr-find-status { height: auto; padding: 0 1; }
    LrFindScreen #lr-find-status.-error { color: $error; }
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        find: FindRate = find_learning_rate,
        steps: int = DEFAULT_STEPS,
        start: float = DEFAULT_START,
        end: float = DEFAULT_END,
    ) -> None:
        super().__init__()
        self.config = config
        self.find = find
        self.steps, self.start, self.end = steps, start, end
        self.points: list[CurvePoint] = []
        self.test: RangeTest | None = None
        self.running = False
        self._process: subprocess.Popen | None = None
        self._dirty = True
        self._closed = False

    def compose(self) -> ComposeResult:
        yield Static(
            Text.assemble(("Learning-rate range test ", "bold"), self.config.name, style=""), id="lr-find-title"
        )
        yield Static(id="lr-find-chart")
        yield Static(id="lr-find-status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_interval(1 / REDRAWS_PER_SECOND, self._redraw_if_dirty)
        self.action_again()

    def on_resize(self) -> None:
        self._dirty = True

    def on_unmount(self) -> None:
        self._closed = True
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # nobody will see its curve; the thread waiting on it ends too

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "use":
            return self.test is not None
        if action == "again":
            return not self.running
        return True

    def action_use(self) -> None:
        """Back, with the suggested rate."""
        if self.test is not None:
            self.dismiss(self.test.suggested_rate)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_again(self) -> None:
        """Start the range test (again)."""
        if self.running:
            return
        self.running, self.test, self.points = True, None, []
        self._dirty = True
        self._status(f"Starting the range test of {self.config.name} in a process of its own (TensorFlow loads first)…")
        self.refresh_bindings()
        self._run_test()

    # --------------------------------------------------------------- the test

    @work(thread=True, exclusive=True, group="lr-find", exit_on_error=False)
    def _run_test(self) -> None:
        try:
            outcome: RangeTest | str = self.find(
                self.config,
                self.steps,
                self.start,
                self.end,
                on_point=self._point_from_thread,
                on_start=self._started,
            )
        except ConfigError as error:  # the user's: a NaN loss from the first step, a bad range, the data
            outcome = one_line(str(error))
        except Exception as error:  # noqa: BLE001 - shown, never a crash
            outcome = one_line(str(error) or type(error).__name__)
        if not self._closed:
            self.app.call_from_thread(self._finished, outcome)

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process
        if self._closed:  # the screen closed while the process was starting
            process.terminate()

    def _point_from_thread(self, point: CurvePoint) -> None:
        if not self._closed:
            self.app.call_from_thread(self._add_point, point)

    def _add_point(self, point: CurvePoint) -> None:
        self.points.append(point)
        self._dirty = True
        loss = f"{point.smoothed:.4f}" if point.smoothed is not None else "NaN"
        self._status(f"step {point.step}/{self.steps} · rate {point.learning_rate:.2g} · smoothed loss {loss}")

    def _finished(self, outcome: RangeTest | str) -> None:
        if self._closed:
            return
        self.running, self._process = False, None
        if isinstance(outcome, str):
            self._status(f"{outcome} · r runs it again, Escape goes back", error=True)
        else:
            self.test, self.points = outcome, list(outcome.points)
            self._status(self._summary(outcome))
        self._dirty = True
        self._redraw_if_dirty()
        self.refresh_bindings()

    def _summary(self, test: RangeTest) -> str:
        found = test.suggestion
        steepest = f" · steepest {found.steepest_rate:.2g}" if found.steepest_rate else ""
        return (
            f"Suggested train.learning_rate = {test.suggested_rate:g} (the valley){steepest} · "
            f"{len(test.points)} steps, {STOP_REASONS[test.stopped]} · Enter uses it"
        )

    # ----------------------------------------------------------------- drawing

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#lr-find-status", Static)
        status.update(text)
        status.set_class(error, "-error")
        # A status that wraps to another line takes a row from the chart: draw it again
        # once the layout has given the chart its new size, or its axis labels fall off.
        self.call_after_refresh(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if not self._dirty or self._closed:
            return
        self._dirty = False
        chart = self.query_one("#lr-find-chart", Static)
        size = chart.content_size
        suggestion = self.test.suggestion if self.test is not None else None
        chart.update(draw_curve(self.points, suggestion, size.width, size.height))
