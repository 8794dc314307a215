"""The Eval view of one run: loss, accuracy and top-5; the confusion matrix; per-class
figures; the most confident mistakes as pictures; per-class F1 beside another run's.

What is slow happens off the UI thread: reading ``eval.json`` (a 1,000-class
matrix is a million counts) and evaluating, which runs in a process of its
own (:func:`engine.run.eval_job.evaluate_in_subprocess`) since the UI never
loads TensorFlow. Leaving the view ends an evaluation still under way.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Footer, Static

from engine.errors import ConfigError
from engine.evaluation import EVAL_FILE, EvalReport, read_report
from engine.run.eval_job import evaluate_in_subprocess
from tui.terminal import one_line
from tui.widgets.confusion_grid import Confusion, ConfusionGrid
from tui.widgets.mistake_gallery import MistakeGallery
from tui.widgets.sortable_table import Column, SortableTable, count, difference, figure
from tui.widgets.term_image import image_widget_class, renderer_setting

WIDE = 100
"""From this many columns the matrix view has the mistakes beside the matrix."""
VIEWS = {
    "matrix": "eval-matrix",
    "classes": "eval-classes",
    "pictures": "eval-pictures",
    "compare": "eval-compare",
}
"""A view's name (in the keys' actions) and its container's id."""


def _class_name(value: tuple[int, str]) -> str:
    return value[1]


# A class cell holds (index, name): drawn as the name, sorted by the index.
CLASS_COLUMNS = (
    Column("class", "class", _class_name, numeric=False),
    Column("precision", "precision", figure),
    Column("recall", "recall", figure),
    Column("f1", "F1", figure),
    Column("support", "support", count),
)
COMPARE_COLUMNS = (
    Column("class", "class", _class_name, numeric=False),
    Column("f1", "F1 this run", figure),
    Column("other_f1", "F1 other", figure),
    Column("difference", "Δ this − other", difference),
    Column("support", "support", count),
)

Evaluate = Callable[..., EvalReport]
"""``evaluate_in_subprocess``'s shape: (run_dir, on_start=callback) -> EvalReport."""


@dataclass
class Loaded:
    """A report with what drawing it needs, prepared off the UI thread."""

    run_dir: Path
    report: EvalReport | None = None
    confusion: Confusion | None = None
    image_class: type[Widget] | None = None


def prepare(run_dir: Path, report: EvalReport | None, renderer: str) -> Loaded:
    """The matrix as numpy and the picture widget's class (importing it loads numpy and PIL)."""
    if report is None:
        return Loaded(run_dir)
    confusion = Confusion.from_counts(report.confusion, report.class_names)
    return Loaded(run_dir, report, confusion, image_widget_class(renderer))


class EvalScreen(Screen[None]):
    """One run's evaluation.

    Args:
        engine: the app's engine (finds runs; lists them for the comparison).
        run_id: the run.
        run_dir: its directory (looked up through the engine when None).
        evaluate: runs an evaluation (tests hand a fake; the real one starts a process).
        renderer: how pictures are drawn (:data:`tui.widgets.term_image.RENDERERS`);
            None reads ``CONVDECK_IMAGES``.
    """

    # | key | does                                         | when            |
    # |-----|----------------------------------------------|-----------------|
    # | m   | matrix (and mistakes beside it when wide)    | a report        |
    # | t   | per-class table (s / r sort, or click)       | a report        |
    # | p   | the mistakes as pictures                     | a report        |
    # | c   | compare with another evaluated run           | a report        |
    # | e   | evaluate (again)                             | not evaluating  |
    BINDINGS = [
        Binding("m", "show_view('matrix')", "Matrix", tooltip="The confusion matrix", id="eval.matrix"),
        Binding(
            "t",
            "show_view('classes')",
            "Classes",
            tooltip="Per-class precision, recall, F1 and support, worst first",
            id="eval.classes",
        ),
        Binding("p", "show_view('pictures')", "Mistakes", tooltip="The most confident mistakes", id="eval.pictures"),
        Binding("c", "compare", "Compare", tooltip="Per-class F1 beside another evaluated run", id="eval.compare"),
        Binding(
            "e",
            "evaluate",
            "Evaluate",
            tooltip="Evaluate the run's last weights on the validation split",
            id="eval.evaluate",
        ),
        Binding("escape", "close", "Back", tooltip="Back (ends an evaluation under way)", id="eval.close"),
    ]

    def __init__(
        self,
        engine: Any,
        run_id: str,
        run_dir: Path | None = None,
        *,
        evaluate: Evaluate = evaluate_in_subprocess,
        renderer: str | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.run_id = run_id
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.evaluate = evaluate
        self.renderer = renderer
        self.report: EvalReport | None = None
        self.other_run: str | None = None
        self.evaluating_since: float | None = None
        self._evaluator: subprocess.Popen | None = None
        self._progress_timer: Any = None
        self._closed = False

    def compose(self) -> ComposeResult:
        yield Static(f"{self.run_id}: reading its evaluation…", id="eval-title")
        with ContentSwitcher(initial="eval-none", id="eval-views"):
            yield Static(id="eval-none")
            with Horizontal(id="eval-matrix"):
                yield ConfusionGrid(id="eval-grid")
                yield MistakeGallery(id="eval-side-gallery")
            with Vertical(id="eval-classes"):
                yield Static("Worst first · click a header, or s and r, to sort", classes="eval-hint")
                yield SortableTable(CLASS_COLUMNS, id="eval-class-table")
            yield MistakeGallery(id="eval-pictures")
            with Vertical(id="eval-compare"):
                yield Static(id="eval-compare-title", classes="eval-hint")
                yield SortableTable(COMPARE_COLUMNS, id="eval-compare-table")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < WIDE, "-narrow")
        if self.renderer is None:
            try:
                self.renderer = renderer_setting()
            except ValueError as error:
                self.notify(f"{error}; drawing pictures with auto", severity="warning")
                self.renderer = "auto"
        self._load()

    def on_resize(self, event: Any) -> None:
        self.set_class(event.size.width < WIDE, "-narrow")

    def on_unmount(self) -> None:
        self._closed = True
        evaluator = self._evaluator
        if evaluator is not None and evaluator.poll() is None:
            evaluator.terminate()  # nobody will see its report; the thread waiting on it ends too

    # ---------------------------------------------------------------- reading

    @work(thread=True, exclusive=True, group="eval-load", exit_on_error=False)
    def _load(self) -> None:
        try:
            run_dir = self.run_dir or Path(self.engine.find_run(self.run_id).run_dir)
            loaded = prepare(run_dir, read_report(run_dir), self.renderer)
        except Exception as error:  # noqa: BLE001 - a run gone meanwhile: say so, stay open
            self.app.call_from_thread(self._say, f"Cannot read {self.run_id}: {one_line(str(error))}", True)
            return
        self.app.call_from_thread(self._loaded, loaded)

    def _loaded(self, loaded: Loaded) -> None:
        self.run_dir = loaded.run_dir
        if loaded.report is None:
            self._say(
                f"{self.run_id} has no evaluation yet.\n\n"
                "Press e to evaluate its last weights on the validation split: the confusion "
                "matrix, per-class precision, recall and F1, and the most confident mistakes "
                "as pictures. It runs in a process of its own (TensorFlow loads first)."
            )
            return
        self._show(loaded)

    def _show(self, loaded: Loaded) -> None:
        report = self.report = loaded.report
        self._title()
        self.query_one(ConfusionGrid).show(loaded.confusion)
        classes = [((c.index, c.name), c.precision, c.recall, c.f1, c.support) for c in report.worst_classes()]
        self.query_one("#eval-class-table", SortableTable).set_records(classes, sort_by="f1")
        for gallery in self.query(MistakeGallery):
            gallery.show(loaded.run_dir, report, loaded.image_class)
        self.action_show_view("matrix")

    def _title(self, state: str = "") -> None:
        report = self.report
        if report is None:
            return
        top5 = f" · top-5 {report.top5_accuracy:.1%}" if report.top5_accuracy is not None else ""
        text = (
            f"loss {report.loss:.4f} · accuracy {report.accuracy:.1%}{top5} · "
            f"{report.weights} weights on {report.split} ({report.examples}) · {self.run_id}"
        )
        self.query_one("#eval-title", Static).update(f"{state} · {text}" if state else text)

    def _say(self, text: str, error: bool = False) -> None:
        """Put ``text`` in the view (when there is no report to show) or the title line."""
        if self._closed:
            return
        if self.report is not None:
            self._title(text.split("\n", 1)[0])
        else:
            self.query_one("#eval-title", Static).update(f"Eval · {self.run_id}")
            self.query_one("#eval-none", Static).update(text)
            self.query_one("#eval-views", ContentSwitcher).current = "eval-none"
        self.query_one("#eval-none").set_class(error, "-error")
        self.refresh_bindings()

    # ------------------------------------------------------------------ views

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("show_view", "compare"):
            return self.report is not None
        if action == "evaluate":
            return self.evaluating_since is None and self.run_dir is not None
        return True

    def action_show_view(self, view: str) -> None:
        """Show one of :data:`VIEWS` and focus what it is read with."""
        container = VIEWS[view]
        self.query_one("#eval-views", ContentSwitcher).current = container
        focus = {
            "matrix": ConfusionGrid,
            "classes": "#eval-class-table",
            "pictures": "#eval-pictures",
            "compare": "#eval-compare-table",
        }[view]
        self.query_one(focus).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    # ------------------------------------------------------------- evaluating

    def action_evaluate(self) -> None:
        """Evaluate the run's last weights in a process of its own; the view shows it when done."""
        if self.evaluating_since is not None or self.run_dir is None:
            return
        self.evaluating_since = time.monotonic()
        self._progress_timer = self.set_interval(1.0, self._show_progress)
        self._show_progress()
        self._evaluate(self.run_dir, self.renderer)

    def _show_progress(self) -> None:
        seconds = time.monotonic() - (self.evaluating_since or time.monotonic())
        self._say(
            f"Evaluating {self.run_id}… {seconds:.0f} s\n\n"
            "The last weights on the validation split, in a process of its own "
            "(TensorFlow loads first). Escape stops it."
        )

    @work(thread=True, exclusive=True, group="eval-run", exit_on_error=False)
    def _evaluate(self, run_dir: Path, renderer: str) -> None:
        try:
            report = self.evaluate(run_dir, on_start=self._evaluator_started)
            outcome: Loaded | str = prepare(run_dir, report, renderer)
        except ConfigError as error:  # no checkpoint, data gone: the evaluator's own line
            outcome = f"Cannot evaluate {self.run_id}: {one_line(str(error))}"
        except Exception as error:  # noqa: BLE001 - shown, never a crash
            lines = str(error).strip().splitlines() or [type(error).__name__]
            outcome = one_line(lines[0] + (f" … {lines[-1]}" if len(lines) > 1 else ""))
        self.app.call_from_thread(self._evaluated, outcome)

    def _evaluator_started(self, process: subprocess.Popen) -> None:
        self._evaluator = process
        if self._closed:  # the view closed while the process was starting
            process.terminate()

    def _evaluated(self, outcome: Loaded | str) -> None:
        if self._closed:
            return
        self._progress_timer.stop()
        self.evaluating_since, self._evaluator = None, None
        if isinstance(outcome, str):
            self._say(outcome, error=True)
            return
        self.query_one("#eval-none").remove_class("-error")
        self._show(outcome)
        self.refresh_bindings()

    # -------------------------------------------------------------- comparing

    def action_compare(self) -> None:
        """Pick another run that has an evaluation; show both runs' per-class F1."""
        self._find_evaluated_runs()

    @work(thread=True, exclusive=True, group="eval-runs", exit_on_error=False)
    def _find_evaluated_runs(self) -> None:
        runs = []
        try:
            for summary in reversed(self.engine.list_runs()):
                run_dir = self._evaluated_dir(summary.run_id)
                if summary.run_id != self.run_id and run_dir is not None:
                    runs.append((summary.run_id, f"{summary.run_id}  {summary.preset}  {summary.status}"))
        except Exception as error:  # noqa: BLE001
            self.app.call_from_thread(self.notify, f"cannot list runs: {error}", severity="error")
            return
        self.app.call_from_thread(self._pick_other, runs)

    def _evaluated_dir(self, run_id: str) -> Path | None:
        try:
            run_dir = Path(self.engine.find_run(run_id).run_dir)
        except Exception:  # noqa: BLE001 - a run removed meanwhile is simply not offered
            return None
        return run_dir if (run_dir / EVAL_FILE).exists() else None

    def _pick_other(self, runs: list[tuple[str, str]]) -> None:
        from tui.screens.pick_run import PickRunScreen

        if self._closed:
            return
        if not runs:
            self.notify(
                "No other run has an evaluation yet (press e in its Eval view, or `convdeck eval RUN`).",
                severity="warning",
            )
            return
        title = f"Compare {self.run_id}'s per-class F1 with:"
        self.app.push_screen(PickRunScreen(title, runs), self._compare_with)

    def _compare_with(self, run_id: str | None) -> None:
        if run_id:
            self._load_other(run_id)

    @work(thread=True, exclusive=True, group="eval-other", exit_on_error=False)
    def _load_other(self, run_id: str) -> None:
        run_dir = self._evaluated_dir(run_id)
        report = read_report(run_dir) if run_dir is not None else None
        if report is None:
            self.app.call_from_thread(self.notify, f"{run_id} has no readable evaluation", severity="error")
            return
        self.app.call_from_thread(self._show_compare, run_id, report)

    def _show_compare(self, run_id: str, other: EvalReport) -> None:
        if self._closed or self.report is None:
            return
        self.other_run = run_id
        records, unmatched = compare_records(self.report, other)
        report = self.report
        note = f" · {unmatched} classes only in one run (matched by name)" if unmatched else ""
        self.query_one("#eval-compare-title", Static).update(
            f"F1 per class: this run ({self.run_id}) against {run_id} · accuracy "
            f"{report.accuracy:.1%} against {other.accuracy:.1%}{note}"
        )
        self.query_one("#eval-compare-table", SortableTable).set_records(records, sort_by="difference")
        self.action_show_view("compare")


def compare_records(this: EvalReport, other: EvalReport) -> tuple[list[tuple], int]:
    """Rows of the comparison, classes matched by name, and how many are in one run only.

    A row: ((index, name), F1 here, F1 there, here − there, support here).
    """
    theirs = {c.name: c for c in other.classes}
    records = []
    for mine in this.classes:
        match = theirs.get(mine.name)
        other_f1 = match.f1 if match is not None else None
        change = mine.f1 - other_f1 if other_f1 is not None else None
        records.append(((mine.index, mine.name), mine.f1, other_f1, change, mine.support))
    unmatched = len({c.name for c in this.classes} ^ set(theirs))
    return records, unmatched
