"""The Eval view: opened by a key, sorted, paged through 1,000 classes, compared, evaluated.

Reports come from :func:`engine.evaluation.evaluate_outputs` on seeded random
logits and are written where a real evaluation writes them, with small PNGs
(PIL) for the mistakes. Pictures are forced to half-blocks. No TensorFlow, no worker.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import until
from PIL import Image

from engine.errors import ConfigError
from engine.evaluation import EvalReport, evaluate_outputs, mistake_image_path, write_report
from engine.gpu import RecordedSource
from engine.run.eval_job import evaluate_in_subprocess
from tests.fake_engine import FakeEngine, FakeRun, make_preset, run_started
from tui.app import ConvdeckApp
from tui.screens.eval import EvalScreen
from tui.screens.pick_run import PickRunScreen
from tui.screens.runs import RunsScreen
from tui.widgets.confusion_grid import ConfusionGrid
from tui.widgets.mistake_gallery import MistakeGallery
from tui.widgets.sortable_table import SortableTable
from tui.widgets.term_image import detect_renderer, renderer_setting

NVML = Path(__file__).parent / "fixtures" / "nvml"
TESTS_DIR = Path(__file__).parent


@pytest.fixture(autouse=True)
def half_blocks(monkeypatch):
    """Pictures as coloured half-blocks whatever terminal runs the tests."""
    monkeypatch.setenv("CONVDECK_IMAGES", "halfcell")


# -- reports, pictures and runs on disk ---------------------------------------------


def make_report(classes: int = 10, examples: int = 400, seed: int = 0, names=None) -> EvalReport:
    """A report of a model right about two times in three (its logits favour the true class)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, max(0, examples - classes))])
    logits = rng.normal(size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += 2.0
    return evaluate_outputs(labels, logits, names)


def write_pictures(run_dir: Path, report: EvalReport) -> None:
    """A 16 x 16 picture per mistake, as the evaluator writes them: a gradient and a disc."""
    y, x = np.mgrid[0:16, 0:16]
    for rank, mistake in enumerate(report.mistakes):
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = x * 16, y * 16
        pixels[(x - 8) ** 2 + (y - 8) ** 2 < (mistake.true % 5 + 2) ** 2] = 255
        path = mistake_image_path(run_dir, rank, mistake)
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)


def make_run(root: Path, run_id: str, report: EvalReport | None = None) -> FakeRun:
    """A finished fake run whose directory holds ``report`` (and its pictures), or nothing."""
    config = make_preset("lenet5-digits").config
    run = FakeRun(run_id, config, history=[run_started(run_id, config)])
    run.status = "finished"
    run.run_dir = root / run_id
    run.run_dir.mkdir(parents=True)
    if report is not None:
        write_report(run.run_dir, report)
        write_pictures(run.run_dir, report)
    return run


def make_app(runs: list[FakeRun], attach: str | None = None) -> ConvdeckApp:
    return ConvdeckApp(
        engine=FakeEngine(runs=runs),
        gpu_source=RecordedSource.from_file(NVML / "no_gpu.json"),
        gpu_interval=3600,
        chart_data_interval=0.0,
        attach=attach,
    )



async def open_eval(pilot) -> EvalScreen:
    """From the main screen watching a run: press e, wait for the report to show."""
    app = pilot.app
    await until(pilot, lambda: app.run_link is not None and app.presets_loaded)
    await pilot.press("e")
    await until(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.report is not None)
    await pilot.pause(0.05)
    return app.screen


def none_text(screen: EvalScreen) -> str:
    """What the view says when it has no report to show ("" before it is composed)."""
    found = screen.query("#eval-none")
    return str(found.first().content) if found else ""


# -- opening ----------------------------------------------------------------------------


async def test_e_opens_the_eval_view_of_the_run_on_screen(tmp_path):
    report = make_report()
    app = make_app([make_run(tmp_path, "run-a", report)], attach="run-a")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_eval(pilot)
        assert screen.run_id == "run-a" and screen.evaluate is evaluate_in_subprocess
        title = str(screen.query_one("#eval-title").content)
        assert f"loss {report.loss:.4f}" in title and f"accuracy {report.accuracy:.1%}" in title
        assert f"top-5 {report.top5_accuracy:.1%}" in title
        grid = screen.query_one(ConfusionGrid)
        assert app.focused is grid and grid.page == (10, 10)
        first_row = grid.render_line(1).text
        assert first_row.split() == ["0", *(str(c) if c else "·" for c in report.confusion[0])]
        assert screen.query_one("#eval-side-gallery").display  # 100 columns: the mistakes beside
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, EvalScreen))


async def test_e_without_a_run_says_so(tmp_path):
    app = make_app([])
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("e")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, EvalScreen)
        assert any("No run on screen" in str(n.message) for n in app._notifications)


async def test_the_runs_screen_opens_the_selected_runs_eval_view(tmp_path):
    runs = [make_run(tmp_path, "run-a", make_report()), make_run(tmp_path, "run-b", make_report(seed=1))]
    app = make_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs)
        selected = app.screen.runs[0].run_id
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.report is not None)
        assert app.screen.run_id == selected
        assert app.screen.run_dir == tmp_path / selected
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))


# -- the per-class table ------------------------------------------------------------------


def column(table: SortableTable, key: str) -> list:
    index = [c.key for c in table.table_columns].index(key)
    return [record[index] for record in table.records]


async def test_the_class_table_is_worst_first_and_sorts_by_any_column(tmp_path):
    report = make_report(classes=12, seed=4)
    app = make_app([make_run(tmp_path, "run-a", report)], attach="run-a")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_eval(pilot)
        await pilot.press("t")
        table = screen.query_one("#eval-class-table", SortableTable)
        assert app.focused is table and table.row_count == 12
        assert [name for _, name in column(table, "class")] == [c.name for c in report.worst_classes()]
        await pilot.press("s")  # F1 -> the next column, support
        assert table.sort_column == "support" and column(table, "support") == sorted(column(table, "support"))
        await pilot.press("r")
        assert column(table, "support") == sorted(column(table, "support"), reverse=True)
        # A click on a header sorts by it; a second click reverses.
        x = table.columns[table.ordered_columns[0].key].get_render_width(table) + 1
        await pilot.click(table, offset=(x, 0))
        assert table.sort_column == "precision"
        assert column(table, "precision") == sorted(column(table, "precision"))
        await pilot.click(table, offset=(x, 0))
        assert column(table, "precision") == sorted(column(table, "precision"), reverse=True)
        assert "precision ▼" in str(table.ordered_columns[1].label)


# -- a thousand classes ---------------------------------------------------------------------


async def test_a_1000_class_matrix_draws_only_its_page_and_pages(tmp_path):
    classes = 1000
    report = make_report(classes=classes, examples=3 * classes, seed=5)
    app = make_app([make_run(tmp_path, "run-k", report)], attach="run-k")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_eval(pilot)
        grid = screen.query_one(ConfusionGrid)
        rows, columns = grid.page
        assert rows == 20 and 10 < columns < 30  # 80 x 24: a page of the matrix
        assert len(list(grid.render_line(1))) == columns + 2  # a label, its gap, the page's cells
        assert grid.render_line(0).text.split() == [str(c) for c in range(columns)]
        await pilot.press("pagedown", "pagedown", "right_square_bracket")
        assert grid.cursor == grid.origin == (2 * rows, columns)
        assert grid.render_line(1).text.split()[0] == str(2 * rows)
        assert grid.render_line(0).text.split()[0] == str(columns)
        assert f"of {classes}" in grid.status_text()
        await pilot.press("end")
        assert grid.cursor == (classes - 1, classes - 1)
        assert grid.origin == (classes - rows, classes - columns)
        assert grid.render_line(rows).text.split()[0] == "999"
        await pilot.press("home", "down", "right")
        assert grid.cursor == (1, 1) and grid.origin == (0, 0)
        count = report.confusion[1][1]
        assert grid.status_text().startswith(f"true 1 → predicted 1: {count} of {sum(report.confusion[1])}")
        await pilot.press("t")
        assert screen.query_one("#eval-class-table", SortableTable).row_count == classes


async def test_the_matrix_fits_80_by_24_up_to_20_classes(tmp_path):
    app = make_app([make_run(tmp_path, "run-t", make_report(classes=20, seed=6))], attach="run-t")
    async with app.run_test(size=(80, 24)) as pilot:
        grid = (await open_eval(pilot)).query_one(ConfusionGrid)
        assert grid.page == (20, 20)
        assert "columns" not in grid.status_text()  # nothing off screen: no page to say
        assert not grid.check_action("page", (0, 1))  # so the column keys leave the footer


# -- pictures -------------------------------------------------------------------------------


async def test_the_mistakes_are_pictures_with_their_labels_in_the_reports_order(tmp_path):
    from textual_image.widget import HalfcellImage

    names = [f"class{i}" for i in range(10)]
    report = make_report(seed=2, names=names)
    run = make_run(tmp_path, "run-a", report)
    mistake_image_path(run.run_dir, 1, report.mistakes[1]).unlink()  # an older evaluation's gap
    app = make_app([run], attach="run-a")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_eval(pilot)
        await pilot.press("p")
        gallery = screen.query_one("#eval-pictures", MistakeGallery)
        cards = list(gallery.query(".mistake-card"))
        assert len(cards) == len(report.mistakes) == 16
        for rank, (card, mistake) in enumerate(zip(cards, report.mistakes, strict=True)):
            caption = str(card.query_one(".mistake-caption").content)
            assert caption == f"{names[mistake.true]} → {names[mistake.predicted]}\n{mistake.confidence:.1%}"
            picture = card.query_one(".mistake-image")
            if rank == 1:
                assert str(picture.content) == "no picture"
            else:
                assert isinstance(picture, HalfcellImage)
                assert picture.image == mistake_image_path(run.run_dir, rank, mistake)
        assert not screen.query_one("#eval-side-gallery").display  # 80 columns: the matrix alone


# -- comparing two runs ------------------------------------------------------------------


async def test_compare_shows_both_runs_f1_and_the_difference(tmp_path):
    this, other = make_report(seed=7), make_report(seed=8)
    runs = [
        make_run(tmp_path, "run-a", this),
        make_run(tmp_path, "run-b", other),
        make_run(tmp_path, "run-c"),  # no evaluation: not offered
    ]
    app = make_app(runs, attach="run-a")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_eval(pilot)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, PickRunScreen))
        assert [run_id for run_id, _ in app.screen.runs] == ["run-b"]
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is screen and screen.other_run == "run-b")
        table = screen.query_one("#eval-compare-table", SortableTable)
        assert app.focused is table and table.sort_column == "difference"
        theirs = {c.name: c.f1 for c in other.classes}
        mine = {c.name: c.f1 for c in this.classes}
        for (_, name), f1, other_f1, change, _ in table.records:
            assert (f1, other_f1) == (mine[name], theirs[name])
            assert change == pytest.approx(mine[name] - theirs[name])
        assert column(table, "difference") == sorted(column(table, "difference"))
        assert "run-b" in str(screen.query_one("#eval-compare-title").content)


async def test_compare_with_no_other_evaluated_run_says_so(tmp_path):
    app = make_app([make_run(tmp_path, "run-a", make_report()), make_run(tmp_path, "run-c")], attach="run-a")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_eval(pilot)
        await pilot.press("c")
        await until(pilot, lambda: any("No other run" in str(n.message) for n in app._notifications))
        assert app.screen is screen


# -- evaluating from the view --------------------------------------------------------------


async def push_eval(pilot, run: FakeRun, evaluate) -> EvalScreen:
    app = pilot.app
    await until(pilot, lambda: app.presets_loaded)
    screen = EvalScreen(app.engine, run.run_id, run.run_dir, evaluate=evaluate, renderer="halfcell")
    app.push_screen(screen)
    await until(pilot, lambda: "no evaluation yet" in none_text(screen))
    return screen


async def test_a_run_without_an_evaluation_is_evaluated_in_a_worker(tmp_path):
    run = make_run(tmp_path, "run-x")
    release, calls = threading.Event(), []

    def evaluate(run_dir, on_start=None):
        calls.append(run_dir)
        assert release.wait(20)
        report = make_report(seed=9)
        write_report(run_dir, report)
        write_pictures(run_dir, report)
        return report

    app = make_app([run])
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await push_eval(pilot, run, evaluate)
        assert "Press e to evaluate" in none_text(screen)
        assert not screen.check_action("show_view", ("classes",))
        await pilot.press("e")
        await until(pilot, lambda: "Evaluating run-x…" in none_text(screen))
        assert not screen.check_action("evaluate", ())  # one at a time
        await pilot.press("m")  # the UI answers keys meanwhile (nothing to show yet)
        release.set()
        await until(pilot, lambda: screen.report is not None)
        assert calls == [run.run_dir]
        assert screen.query_one("#eval-views").current == "eval-matrix"
        assert screen.query_one(ConfusionGrid).confusion.counts.tolist() == screen.report.confusion
        assert screen.check_action("evaluate", ())


async def test_a_run_that_cannot_be_evaluated_says_why_in_one_line(tmp_path):
    run = make_run(tmp_path, "run-x")
    reason = "run run-x has no checkpoint to evaluate; train it first (`convdeck resume`)"

    def evaluate(run_dir, on_start=None):
        raise ConfigError(reason)

    app = make_app([run])
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await push_eval(pilot, run, evaluate)
        await pilot.press("e")
        await until(pilot, lambda: screen.evaluating_since is None and "Cannot" in none_text(screen))
        assert none_text(screen) == f"Cannot evaluate run-x: {reason}"
        assert screen.query_one("#eval-none").has_class("-error")
        assert screen.check_action("evaluate", ())  # and e tries again


async def test_leaving_the_view_ends_the_evaluation(tmp_path):
    run = make_run(tmp_path, "run-x")
    processes: list[subprocess.Popen] = []

    def evaluate(run_dir, on_start=None):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        processes.append(process)
        on_start(process)
        process.wait()
        raise RuntimeError(f"evaluation failed (exit {process.returncode})")

    app = make_app([run])
    async with app.run_test(size=(100, 30)) as pilot:
        await push_eval(pilot, run, evaluate)
        await pilot.press("e")
        await until(pilot, lambda: processes)
        await pilot.press("escape")
        await until(pilot, lambda: processes[0].poll() is not None)
        assert not isinstance(app.screen, EvalScreen)


# -- keys, renderers, imports ---------------------------------------------------------------


def test_every_binding_has_a_description_tooltip_and_id():
    from textual.binding import Binding

    for owner in (EvalScreen, PickRunScreen, ConfusionGrid, SortableTable):
        for binding in owner.BINDINGS:
            assert isinstance(binding, Binding)
            assert binding.description and binding.tooltip and binding.id, (owner, binding)


def test_the_renderer_is_chosen_by_convdeck_images_or_the_terminal():
    assert renderer_setting({}) == "auto"
    assert renderer_setting({"CONVDECK_IMAGES": " HalfCell "}) == "halfcell"
    with pytest.raises(ValueError, match="CONVDECK_IMAGES='sixels': expected one of auto, tgp"):
        renderer_setting({"CONVDECK_IMAGES": "sixels"})
    assert detect_renderer({"TERM": "xterm-kitty"}) == "tgp"
    assert detect_renderer({"TERM": "foot"}) == "sixel"
    assert detect_renderer({"TERM_PROGRAM": "WezTerm"}) == "sixel"
    assert detect_renderer({"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"}) == "halfcell"
    assert detect_renderer({"TERM": "xterm-256color"}) == "halfcell"


def test_loading_the_picture_widgets_asks_the_terminal_nothing():
    """textual-image questions a tty on import; inside Textual the answer would arrive as keys."""
    code = (
        "from tui.widgets.term_image import image_widget_class; print(image_widget_class('auto').__name__, flush=True)"
    )
    env = {name: os.environ[name] for name in ("PATH", "PYTHONPATH", "HOME") if name in os.environ}
    env["TERM"] = "xterm-256color"  # a terminal known for nothing: half-blocks
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, env=env
    )
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 30)
        try:
            chunk = os.read(primary, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(30) == 0, process.stderr.read()
    assert b"\x1b" not in output, output  # no Sixel (ESC [ c) nor Kitty (ESC _ G) query
    assert output.strip() == b"HalfcellImage"


def test_the_eval_view_does_not_import_tensorflow():
    code = (
        "import sys, tui.app, tui.screens.eval, tui.screens.pick_run; "
        "from tui.widgets.term_image import image_widget_class; image_widget_class('halfcell'); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- snapshots ----------------------------------------------------------------------------------


def snapshot_app(tmp_path: Path, classes: int) -> ConvdeckApp:
    report = make_report(classes=classes, seed=11)
    return make_app([make_run(tmp_path, "run-a", report)], attach="run-a")


def test_snapshot_matrix_and_pictures_100x30(snap_compare, tmp_path):
    # pilot.press("e")  the Eval view of the run on screen: matrix, and the mistakes beside it
    assert snap_compare(snapshot_app(tmp_path, 10), terminal_size=(100, 30), run_before=open_eval)


def test_snapshot_10_classes_80x24(snap_compare, tmp_path):
    # pilot.press("e")  at 80 x 24 the matrix alone
    assert snap_compare(snapshot_app(tmp_path, 10), terminal_size=(80, 24), run_before=open_eval)
