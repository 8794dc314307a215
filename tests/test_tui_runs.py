"""The runs screen: columns chosen for the width, readable starts, marks, and the settings comparison.

Runs are fabricated with fixed times and read at a fixed clock (the fake engine's:
its newest event), with the local time zone set to UTC, so the pictures never
change with the day they are taken. Update them with ``--snapshot-update``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import until
from hypothesis import given
from hypothesis import strategies as st

from engine.gpu import RecordedSource
from engine.run.protocol import Failed, Finished
from tests.fake_engine import FakeEngine, FakeRun, make_preset, run_started, training_events
from tui.app import ConvdeckApp
from tui.runs_columns import (
    ALWAYS,
    CELL_PADDING,
    COLUMNS,
    MIN_RUN_WIDTH,
    SCROLLBAR,
    choose_layout,
    shorten_at_dash,
    started_text,
)
from tui.screens.compare import CompareScreen
from tui.screens.runs import RunsScreen
from tui.screens.settings_diff import SettingsDiffScreen
from tui.widgets.sortable_table import SortableTable

NO_GPU = Path(__file__).parent / "fixtures" / "nvml" / "no_gpu.json"
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: the running run's start; the clock reads its last step
DAY = 86_400.0


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Local time is UTC for these tests, whatever the machine says."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def fabricated_run(run_id: str, start: float, steps: int, ending=None, **train) -> FakeRun:
    """A lenet5-digits run of ``steps`` steps from ``start``; ``ending`` (an event) ends it."""
    config = make_preset("lenet5-digits", train={"epochs": 5, **train}).config
    history = [run_started(run_id, config, now=start), *training_events(steps, now=start)]
    run = FakeRun(run_id, config, history=history, now=start)
    if ending is not None:
        run.history.append(ending)
        run.status = "finished"  # the fake's worker is gone
    return run


def four_runs() -> list[FakeRun]:
    """Running now, finished this morning, stopped yesterday, failed last year: four kinds of start."""
    return [
        fabricated_run("20231114-221320-lenet5-digits-ab12", NOW, 300),
        fabricated_run(
            "20231114-081320-lenet5-digits-large-batch-cd34",
            NOW - 14 * 3600,
            500,
            Finished(time=NOW - 13 * 3600, reason="completed", loss=0.0612),
            batch_size=256,
        ),
        fabricated_run(
            "20231113-174320-lenet5-digits-ef56",
            NOW - DAY - 4.5 * 3600,
            180,
            Finished(time=NOW - DAY, reason="stopped"),
            learning_rate=3e-3,
        ),
        fabricated_run(
            "20221201-221320-lenet5-digits-0a1b",
            NOW - 348 * DAY,
            40,
            Failed(time=NOW - 348 * DAY + 60, error="data folder gone"),
        ),
    ]


def make_app(runs: list[FakeRun]) -> ConvdeckApp:
    return ConvdeckApp(
        engine=FakeEngine(runs=runs),
        gpu_source=RecordedSource.from_file(NO_GPU),
        gpu_interval=3600,
        chart_data_interval=0.0,
    )



async def open_runs(pilot) -> RunsScreen:
    app = pilot.app
    await until(pilot, lambda: app.presets_loaded)
    await pilot.press("o")
    await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs)
    await pilot.pause(0.05)
    return app.screen


def shown_columns(screen: RunsScreen) -> list[str]:
    return [column.key for column in screen.columns_layout.columns]


# -- the columns, without an app ----------------------------------------------------------


def test_starts_read_as_today_a_day_this_year_or_a_date():
    assert started_text(NOW - 3600, NOW) == "today 21:13"
    assert started_text(NOW - DAY, NOW) == "11-13 22:13"
    assert started_text(NOW - 348 * DAY, NOW) == "2022-12-01"
    assert started_text(0.0, NOW) == "—"


def test_an_id_leaves_out_whole_words_from_its_middle_and_keeps_its_time_and_tail():
    run_id = "20261202-163701-lenet5-digits-ab12"
    assert shorten_at_dash(run_id, 40) == run_id
    assert shorten_at_dash(run_id, 30) == "20261202-163701-lenet5-…-ab12"
    assert shorten_at_dash(run_id, MIN_RUN_WIDTH) == "20261202-163701-…-ab12"
    assert shorten_at_dash("nodashesatallhere", 8) == "nodashe…"


@given(
    st.lists(st.sampled_from(["2026", "1202", "lenet5", "digits", "a", "resnet18"]), min_size=1, max_size=6),
    st.integers(1, 40),
)
def test_a_shortened_id_fits_and_cuts_only_between_words(words, width):
    text = "-".join(words)
    short = shorten_at_dash(text, width)
    assert len(short) <= width or width < 1
    if short != text and 0 < text.find("-") < width - 1:
        head, _, tail = short.partition("…")
        assert head.endswith("-") and text.startswith(head) and text.endswith(tail)


def cells(run_id: str, status: str = "finished") -> dict[str, str]:
    return {
        "mark": "",
        "run": run_id,
        "status": status,
        "epoch": "12/30",
        "val_acc": "0.9812",
        "started": "today 16:37",
        "loss": "0.0612",
        "model": "resnet [2,2,2,2]",
        "best": "0.9840",
        "step": "12000",
        "preset": "resnet18-cifar10",
    }


def test_80_columns_show_id_status_epoch_val_acc_and_start_and_100_show_more():
    rows = [cells("20261202-163701-lenet5-digits-ab12")]
    at_80 = [column.key for column in choose_layout(rows, 80).columns]
    assert at_80 == ["mark", "run", "status", "epoch", "val_acc", "started"]
    at_100 = [column.key for column in choose_layout(rows, 100).columns]
    assert set(at_80) < set(at_100) and "loss" in at_100
    assert len(choose_layout(rows, 200).columns) == len(COLUMNS)


@given(st.integers(80, 240), st.integers(4, 70), st.sampled_from(["running", "finished", "crashed"]))
def test_the_chosen_columns_always_fit_and_the_first_six_are_always_there(width, id_length, status):
    rows = [cells("2" * id_length, status)]
    layout = choose_layout(rows, width)
    widths = {column.key: max(len(column.label), len(rows[0][column.key])) for column in COLUMNS}
    widths["mark"], widths["run"] = 1, layout.run_width
    used = sum(widths[column.key] + 2 * CELL_PADDING for column in layout.columns)
    assert used <= width - SCROLLBAR
    assert {column.key for column in COLUMNS[:ALWAYS]} <= {column.key for column in layout.columns}
    assert layout.run_width == id_length or layout.run_width >= MIN_RUN_WIDTH


# -- the screen -------------------------------------------------------------------------


async def test_the_columns_follow_the_width_and_ids_are_never_cut_mid_word():
    app = make_app(four_runs())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_runs(pilot)
        assert shown_columns(screen) == ["mark", "run", "status", "epoch", "val_acc", "started"]
        table = screen.query_one("#runs-table")
        ids = [str(table.get_row_at(row)[1]) for row in range(4)]
        assert "20231114-081320-lenet5-…-cd34" in ids  # the long one gives way in whole words
        assert [str(table.get_row_at(row)[-1]) for row in range(4)] == [
            "today 22:13",
            "today 08:13",
            "11-13 17:43",
            "2022-12-01",
        ]
        await pilot.resize_terminal(120, 30)
        await until(pilot, lambda: "model" in shown_columns(screen))
        assert {"loss", "best"} <= set(shown_columns(screen))
        table = screen.query_one("#runs-table")
        assert str(table.get_row_at(1)[1]) == "20231114-081320-lenet5-digits-large-batch-cd34"


async def test_space_marks_any_number_of_runs_and_again_unmarks():
    app = make_app(four_runs())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_runs(pilot)
        ids = [run.run_id for run in screen.runs]
        await pilot.press("space", "space", "space")  # each mark steps to the next run
        assert screen.marked == ids[:3]
        await pilot.press("up", "space")
        assert screen.marked == ids[:2]
        table = screen.query_one("#runs-table")
        assert [str(table.get_row_at(row)[0]) for row in range(4)] == ["●", "●", "", ""]


async def test_d_compares_the_marked_runs_settings_and_best_figures():
    app = make_app(four_runs())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_runs(pilot)
        await pilot.press("space", "space", "space", "d")
        await until(pilot, lambda: isinstance(app.screen, SettingsDiffScreen))
        comparison = app.screen.comparison
        assert comparison.settings == ["train.batch_size", "train.learning_rate"]
        assert [record[0] for record in comparison.records] == [run.run_id for run in screen.runs[:3]]
        table = app.screen.query_one(SortableTable)
        assert table.sort_column == "best_val_accuracy" and table.sort_reverse
        best = [record[3] for record in table.records]
        assert best == sorted(best, reverse=True)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_s_sorts_by_each_column_in_turn_and_r_reverses():
    app = make_app(four_runs())
    async with app.run_test(size=(100, 30)) as pilot:
        await open_runs(pilot)
        await pilot.press("space", "space", "space", "space", "d")
        await until(pilot, lambda: isinstance(app.screen, SettingsDiffScreen))
        table = app.screen.query_one(SortableTable)
        await pilot.press("s")
        assert table.sort_column == "best_epoch"
        await pilot.press("s", "s")
        assert table.sort_column == "status"
        assert [record[-1] for record in table.records] == ["failed", "finished", "running", "stopped"]
        await pilot.press("r")
        assert [record[-1] for record in table.records] == ["stopped", "running", "finished", "failed"]
        await pilot.press("s", "s")  # round to the first setting
        assert table.sort_column == "setting:train.batch_size"
        assert [str(record[1]) for record in table.records] == ["128", "128", "128", "256"]


async def test_a_click_on_a_header_sorts_by_it_and_a_second_click_reverses():
    app = make_app(four_runs())
    async with app.run_test(size=(120, 30)) as pilot:
        await open_runs(pilot)
        await pilot.press("space", "space", "space", "d")
        await until(pilot, lambda: isinstance(app.screen, SettingsDiffScreen))
        table = app.screen.query_one(SortableTable)
        columns = list(table.columns.values())
        index = [str(column.key.value) for column in columns].index("final_loss")
        x = sum(column.get_render_width(table) for column in columns[:index]) + 1
        await pilot.click(SortableTable, offset=(x, 0))
        assert (table.sort_column, table.sort_reverse) == ("final_loss", False)
        losses = [record[-2] for record in table.records]
        assert losses == sorted(losses)
        await pilot.click(SortableTable, offset=(x, 0))
        assert (table.sort_column, table.sort_reverse) == ("final_loss", True)


async def test_with_one_run_d_and_c_say_how_to_mark_two():
    app = make_app(four_runs()[:1])
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_runs(pilot)
        await pilot.press("d", "c")
        await pilot.pause(0.05)
        assert app.screen is screen
        assert sum("Mark two runs or more" in str(n.message) for n in app._notifications) == 2


async def test_c_overlays_every_marked_run():
    app = make_app(four_runs())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_runs(pilot)
        await pilot.press("space", "space", "space", "c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        assert app.screen.run_ids == [run.run_id for run in screen.runs[:3]]


# -- the pictures -----------------------------------------------------------------------


def open_runs_screen(marks: int = 0, then: tuple[str, ...] = ()):
    async def run_before(pilot) -> None:
        await open_runs(pilot)
        await pilot.press(*(["space"] * marks), *then)
        await pilot.pause(0.2)

    return run_before


def test_runs_screen_80x24(snap_compare):
    # pilot.press("o"); pilot.press("space")
    assert snap_compare(make_app(four_runs()), terminal_size=(80, 24), run_before=open_runs_screen(marks=1))


def test_runs_screen_100x30(snap_compare):
    # pilot.press("o")
    assert snap_compare(make_app(four_runs()), terminal_size=(100, 30), run_before=open_runs_screen())


def test_settings_comparison_of_three_runs_100x30(snap_compare):
    # pilot.press("o"); pilot.press("space", "space", "space", "d")
    run_before = open_runs_screen(marks=3, then=("d",))
    assert snap_compare(make_app(four_runs()), terminal_size=(100, 30), run_before=run_before)


def test_runs_of_one_config_say_so_in_the_comparisons_title():
    config = make_preset("lenet5-digits").config
    same = [FakeRun(f"run-{n}", config, history=[run_started(f"run-{n}", config)]).summary() for n in (1, 2)]
    screen = SettingsDiffScreen(same)
    assert screen.comparison.settings == []
    assert screen._title().startswith("2 runs with the same settings")


def test_every_key_on_these_screens_has_a_description_tooltip_and_id():
    for owner in (RunsScreen, SettingsDiffScreen):
        for binding in owner.BINDINGS:
            assert binding.description and binding.tooltip and binding.id, (owner, binding)
