"""convdeck lr-find: the range test's driver, its trial process, the command and the screen.

The decision itself (rates, smoothing, the valley) is tested in test_lr_range.py.
Here: what the trial records and when it stops (its recorder, fed events by
hand), the driver's reading of a trial and its errors, the command end to end
on lenet5-digits (a few steps; then the whole test and a run at its
suggestion, 30-50 s here), and the screen driven by Pilot with a fake driver.
"""

from __future__ import annotations

import io
import json
import math
import re

import pytest
from textual.app import App

from engine.config import ConfigError, RunConfig
from engine.lr_range import LossSmoother, rate_at
from engine.presets import load_preset
from engine.run import lr_find
from engine.run.control import ControlState
from engine.run.lr_find import CurvePoint, RangeTestFailed, conclude
from engine.train.lr_find_trial import CurveRecorder
from tests.conftest import one_line_error, run_cli
from tests.test_lr_range import typical_curve
from tui.lr_curve import draw_curve
from tui.screens.lr_find import LrFindScreen

CONFIG = RunConfig(name="lenet5-digits")


def curve(losses: list[float], start: float = 1e-7, end: float = 10.0) -> list[CurvePoint]:
    """The points a trial reports for these raw losses, smoothed as it smooths them."""
    smoother = LossSmoother()
    points = []
    for i, loss in enumerate(losses):
        smoothed = smoother.add(loss)
        finite = math.isfinite(loss)
        points.append(
            CurvePoint(
                i + 1, rate_at(i, len(losses), start, end), loss if finite else None, smoothed if finite else None
            )
        )
    return points


# ----- the trial's recorder: the curve and the stop ---------------------------------------------


def record(tmp_path, capsys, events: list[tuple[str, dict]], steps: int = 100):
    control = ControlState()
    with CurveRecorder(tmp_path / "events.jsonl", control, steps, 1e-7, 10.0) as recorder:
        for kind, fields in events:
            recorder.emit(kind, **fields)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(lr_find.REPORT_PREFIX)]
    reports = [json.loads(line[len(lr_find.REPORT_PREFIX) :]) for line in lines]
    return recorder, control, [CurvePoint.from_report(r["point"]) for r in reports]


def steps_of(losses: list[float]) -> list[tuple[str, dict]]:
    return [("step", {"step": i + 1, "learning_rate": rate_at(i, 100), "loss": loss}) for i, loss in enumerate(losses)]


def test_the_recorder_stops_the_run_once_the_smoothed_loss_passes_four_times_its_minimum(tmp_path, capsys):
    losses = [2.0] * 30 + [0.5] * 30 + [50.0] * 30
    recorder, control, points = record(tmp_path, capsys, steps_of(losses))
    assert control.stop_requested and recorder.stopped == lr_find.DIVERGED
    last = points[-1]
    assert last.smoothed > 4 * min(p.smoothed for p in points[:-1])  # the step that diverged is on the curve
    assert all(p.smoothed <= 4 * min(q.smoothed for q in points[: i + 1]) for i, p in enumerate(points[:-1]))
    assert len(points) < len(losses)  # later events (the trainer's last) record nothing


def test_the_recorder_stops_after_the_last_step_and_keeps_the_optimizers_rates(tmp_path, capsys):
    events = [("step", {"step": i + 1, "learning_rate": 0.001 * (i + 1), "loss": 1.0}) for i in range(12)]
    recorder, control, points = record(tmp_path, capsys, events, steps=12)
    assert control.stop_requested and recorder.stopped == lr_find.ALL_STEPS
    assert [p.learning_rate for p in points] == [0.001 * (i + 1) for i in range(12)]
    assert [p.step for p in points] == list(range(1, 13))


def test_a_nan_loss_is_a_point_without_a_loss_at_the_schedules_rate(tmp_path, capsys):
    recorder, control, points = record(tmp_path, capsys, [*steps_of([2.0, 1.9]), ("nan", {"step": 3})])
    assert recorder.stopped == lr_find.NOT_A_NUMBER and control.stop_requested
    assert points[-1] == CurvePoint(3, rate_at(2, 100), None, None)


# ----- the driver -------------------------------------------------------------------------------


def test_the_range_config_runs_one_update_a_call_and_stops_at_any_trouble():
    config = lr_find.range_config(load_preset("lenet5-digits"), 100, 1e-7)
    train = config.train
    assert (train.steps_per_call, train.on_nan, train.on_oom, train.schedule) == (1, "stop", "stop", "constant")
    assert train.epochs == 1 and train.steps_per_epoch == 100 and train.learning_rate == 1e-7
    assert train.batch_size == 32 and config.model.arch == "lenet5"  # the preset's own
    with pytest.raises(ConfigError, match="train.strategy=auto"):
        lr_find.range_config(
            CONFIG.model_copy(update={"train": CONFIG.train.model_copy(update={"strategy": "multi_worker"})}), 100, 1e-7
        )


@pytest.mark.parametrize(
    ("steps", "start", "end", "message"),
    [
        (3, 1e-7, 10.0, "--steps: got 3"),
        (100, 0.0, 10.0, "--start: got 0"),
        (100, 1.0, 0.1, "--end: got 0.1"),
        (100, 1e-7, math.inf, "--end: got inf"),
    ],
)
def test_a_range_the_test_cannot_run_is_refused(steps, start, end, message):
    with pytest.raises(ConfigError, match=message):
        lr_find.check_arguments(steps, start, end)


def test_a_loss_nan_from_the_first_step_suggests_a_lower_start():
    with pytest.raises(
        ConfigError, match=r"NaN from the first step \(rate 1e-07\); try a lower start, e.g. --start 1e-09"
    ):
        conclude(CONFIG, curve([math.nan]), lr_find.NOT_A_NUMBER, 100)


def test_a_curve_too_short_to_suggest_from_says_so():
    why = r"stopped after 3 steps at rate 10 \(the smoothed loss passed 4x its minimum\)"
    with pytest.raises(ConfigError, match=why + ": .*at least 4 are needed; try a lower --start"):
        conclude(CONFIG, curve([2.0, 1.0, 40.0]), lr_find.DIVERGED, 100)


def test_the_suggestion_is_the_valley_of_the_smoothed_curve():
    rates, losses = typical_curve()
    points = [CurvePoint(i + 1, r, loss, loss) for i, (r, loss) in enumerate(zip(rates, losses, strict=True))]
    test = conclude(CONFIG, points, lr_find.DIVERGED, 100)
    assert test.suggestion.learning_rate == rates[test.suggestion.valley_index]
    assert test.suggested_rate == float(f"{test.suggestion.learning_rate:.2g}")
    data = json.loads(json.dumps(test.as_dict(), allow_nan=False))
    assert data["suggestion"]["suggested_rate"] == test.suggested_rate and len(data["points"]) == 100


def test_the_driver_reads_points_as_they_come_and_the_end():
    def point(step: int, rate: float, loss: float | None) -> str:
        return json.dumps({"point": {"step": step, "learning_rate": rate, "loss": loss, "smoothed": loss}})

    lines = [
        "noise from a library",
        lr_find.REPORT_PREFIX + json.dumps({"ready": True}),
        lr_find.REPORT_PREFIX + point(1, 1e-7, 2.3),
        lr_find.REPORT_PREFIX + "{torn",
        lr_find.REPORT_PREFIX
        + json.dumps({"point": {"step": 2, "learning_rate": 2e-7, "loss": None, "smoothed": None}}),
        lr_find.REPORT_PREFIX + json.dumps({"stopped": "nan"}),
    ]
    seen: list[CurvePoint] = []
    outcome = lr_find._read_reports(io.StringIO("\n".join(lines) + "\n"), 0.0, seen.append)
    assert seen == outcome.points == [CurvePoint(1, 1e-7, 2.3, 2.3), CurvePoint(2, 2e-7, None, None)]
    assert outcome.stopped == "nan" and outcome.startup_seconds is not None and not outcome.error


def test_a_trial_that_dies_is_a_failure_in_words_not_a_user_error():
    assert lr_find._crash(-9, "") == "the range test was killed by SIGKILL (out of host memory?)"
    assert (
        lr_find._crash(1, "Traceback...\nValueError: boom\n") == "the range test exited with code 1: ValueError: boom"
    )
    assert issubclass(RangeTestFailed, RuntimeError) and not issubclass(RangeTestFailed, ConfigError)


# ----- the curve ----------------------------------------------------------------------------------


def test_the_curve_marks_the_suggestion_and_the_steepest_point():
    points = curve([2.3] * 20 + [2.3 - 0.05 * i for i in range(40)] + [0.3 + 0.5 * i for i in range(10)])
    test = conclude(CONFIG, points, lr_find.DIVERGED, 100)
    drawn = draw_curve(test.points, test.suggestion, 80, 16).plain.splitlines()
    assert f"suggested {test.suggestion.learning_rate:.2g}" in drawn[0]
    assert f"steepest {test.suggestion.steepest_rate:.2g}" in drawn[0]
    assert len(drawn) == 16 and max(len(line) for line in drawn) <= 80
    assert "1e-7" in drawn[-1] and "1e-1" in drawn[-1]  # the rate's decades on the x axis
    assert "suggested" not in draw_curve(test.points, None, 80, 16).plain  # nothing marked while running
    assert draw_curve(test.points, None, 10, 4).plain == "chart: too small"


# ----- the command, end to end on a CPU ---------------------------------------------------------------


def test_lr_find_json_records_the_rates_the_optimizer_used(convdeck_home):
    # Up to 0.01 only: LeNet-5 diverges within 10 steps to 10 (at 1.3, its 9th).
    result = run_cli("lr-find", "lenet5-digits", "--steps", "10", "--end", "0.01", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    test = json.loads(result.stdout)
    rates = [point["learning_rate"] for point in test["points"]]
    # Read from the optimizer inside each step: the schedule really drove it, not the preset's 2e-3.
    assert rates == pytest.approx([rate_at(i, 10, 1e-7, 0.01) for i in range(10)], rel=1e-5)
    assert test["stopped"] == "steps" and [p["step"] for p in test["points"]] == list(range(1, 11))
    assert test["suggestion"]["learning_rate"] in rates
    assert not list(convdeck_home.glob("runs/*"))  # nothing in the run store


def test_lr_find_says_what_to_run(convdeck_home):
    result = run_cli("lr-find", "--steps", "8", "--set", "train.batch_size=16", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lr-find lenet5-digits: the rate from 1e-07 to 10 over 8 steps of batch 16")
    why = "(every step ran|the smoothed loss passed 4x its minimum)"
    assert re.fullmatch(r"stopped after \d steps at rate \S+: " + why, lines[1])
    assert lines[2].startswith("suggested: train.learning_rate = ")
    rate = lines[2].split(" = ")[1].split()[0]
    assert lines[3] == f"  convdeck run lenet5-digits --set train.batch_size=16 --set train.learning_rate={rate}"


def test_lr_find_with_a_nan_loss_from_the_first_step_exits_2(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "nan:step=1")
    line = one_line_error(run_cli("lr-find", "lenet5-digits", "--steps", "8", timeout=300))
    assert "NaN from the first step" in line and "--start 1e-09" in line


def test_lr_find_out_of_memory_is_a_failure_in_one_line(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:step=3")
    result = run_cli("lr-find", "lenet5-digits", "--steps", "8", timeout=300)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "lr-find lenet5-digits failed: out of memory at batch 32" in lines[0]
    assert "convdeck fit-batch" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "2"], "--steps: got 2"),
        (["--start", "-1"], "--start: got -1"),
        (["--start", "fast"], "--start"),
        (["--set", "train.batch_size=-1"], "train.batch_size"),
        (["--set", "model.arch=lenet5", "no-such-preset"], "unknown preset 'no-such-preset'"),
    ],
)
def test_lr_find_user_errors_exit_2(convdeck_home, args, message):
    assert message in one_line_error(run_cli("lr-find", *args))


def test_the_suggested_rate_trains_lenet5_digits_to_95_percent(convdeck_home):
    found = run_cli("lr-find", "lenet5-digits", "--json", timeout=600)
    assert found.returncode == 0, found.stderr
    rate = json.loads(found.stdout)["suggestion"]["suggested_rate"]
    run = run_cli("run", "lenet5-digits", "--set", f"train.learning_rate={rate}", "--json", timeout=600)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["type"] == "epoch_end"]
    assert len(epochs) == load_preset("lenet5-digits").train.epochs
    assert epochs[-1]["val_accuracy"] >= 0.95, (rate, epochs[-1])


# ----- the screen ------------------------------------------------------------------------------------


class FakeDriver:
    """find_learning_rate's shape: streams a curve to on_point, then concludes (or fails)."""

    def __init__(self, losses: list[float] | None = None, error: Exception | None = None) -> None:
        self.losses = losses or [2.3] * 20 + [2.3 - 0.05 * i for i in range(40)] + [0.3 + 0.5 * i for i in range(10)]
        self.error = error
        self.calls: list[tuple] = []

    def __call__(self, config, steps, start, end, *, on_point, on_start):
        self.calls.append((config.name, steps, start, end))
        if self.error is not None:
            raise self.error
        points = curve(self.losses, start, end)
        for point in points:
            on_point(point)
        return conclude(config, points, lr_find.DIVERGED, steps, start, end)


class Host(App):
    """Opens the screen as the app would, and keeps what it was dismissed with."""

    def __init__(self, screen: LrFindScreen) -> None:
        super().__init__()
        self.lr_screen = screen
        self.result: object = "not dismissed"

    def on_mount(self) -> None:
        self.push_screen(self.lr_screen, self._dismissed)

    def _dismissed(self, value: float | None) -> None:
        self.result = value


async def finished(pilot, screen: LrFindScreen) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    while screen.running:
        await pilot.pause(0.05)


async def test_the_screen_draws_the_curve_and_enter_returns_the_suggested_rate():
    driver = FakeDriver()
    screen = LrFindScreen(load_preset("lenet5-digits"), find=driver, steps=70)
    app = Host(screen)
    async with app.run_test(size=(100, 30)) as pilot:
        await finished(pilot, screen)
        assert driver.calls == [("lenet5-digits", 70, 1e-7, 10.0)]
        assert len(screen.points) == 70 and screen.test is not None
        chart = str(screen.query_one("#lr-find-chart").render())
        assert f"suggested {screen.test.suggestion.learning_rate:.2g}" in chart
        status = str(screen.query_one("#lr-find-status").render())
        assert f"train.learning_rate = {screen.test.suggested_rate:g}" in status
        await pilot.press("enter")
        await pilot.pause()
    assert app.result == screen.test.suggested_rate


async def test_at_80x24_the_rate_axis_keeps_its_labels_under_a_status_of_two_lines():
    driver = FakeDriver()
    screen = LrFindScreen(load_preset("lenet5-digits"), find=driver, steps=70)
    app = Host(screen)
    async with app.run_test(size=(80, 24)) as pilot:
        await finished(pilot, screen)
        await pilot.pause(0.3)  # the redraw after the status took its second row
        chart = screen.query_one("#lr-find-chart")
        drawn = str(chart.render()).splitlines()
        assert len(drawn) <= chart.content_size.height, "the chart is drawn taller than it is"
        assert "1e-7" in drawn[-1] and "1e1" in drawn[-1], drawn[-3:]


async def test_a_failed_test_says_why_and_escape_returns_nothing():
    driver = FakeDriver(error=ConfigError("the loss of lenet5-digits is NaN from the first step; try --start 1e-09"))
    screen = LrFindScreen(load_preset("lenet5-digits"), find=driver)
    app = Host(screen)
    async with app.run_test(size=(100, 30)) as pilot:
        await finished(pilot, screen)
        status = screen.query_one("#lr-find-status")
        assert "NaN from the first step" in str(status.render()) and status.has_class("-error")
        await pilot.press("enter")  # no suggestion: nothing to use
        await pilot.pause()
        assert app.result == "not dismissed" and app.screen is screen
        driver.error = None
        await pilot.press("r")  # again, now it succeeds
        await finished(pilot, screen)
        assert screen.test is not None and len(driver.calls) == 2
        await pilot.press("escape")
        await pilot.pause()
    assert app.result is None
