"""Pilot tests for every key path, against a fake engine (no worker, no TensorFlow)."""

from pathlib import Path

import pytest
from conftest import until
from textual.widgets import Input, OptionList

from engine.gpu import RecordedSource
from engine.remedies import REMEDIES
from engine.run.protocol import Failed, Finished, RemedyApplied, WorkerExit
from tests.fake_engine import (
    FakeEngine,
    FakeRun,
    make_preset,
    oom_event,
    run_started,
    training_events,
)
from tui.app import ConvdeckApp
from tui.screens.confirm_quit import ConfirmQuitScreen
from tui.screens.confirm_stop import ConfirmStopScreen
from tui.screens.help import HelpScreen
from tui.widgets.config_pane import ConfigPane
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_chart import LossChart
from tui.widgets.remedy_bar import RemedyBar

NO_GPU = Path(__file__).parent / "fixtures" / "nvml" / "no_gpu.json"


def make_app(engine=None, **kwargs) -> ConvdeckApp:
    kwargs.setdefault("gpu_source", RecordedSource.from_file(NO_GPU))
    kwargs.setdefault("gpu_interval", 3600)
    kwargs.setdefault("chart_data_interval", 0.0)
    return ConvdeckApp(engine=engine or FakeEngine(), **kwargs)



async def started(pilot, app, engine, steps=20):
    """Launch, press Enter, feed ``steps`` steps; returns the fake run."""
    await until(pilot, lambda: app.presets_loaded)
    await pilot.press("enter")
    await until(pilot, lambda: engine.started and app.state and app.state.status == "running")
    run = engine.started[0]
    if steps:
        run.feed(*training_events(steps))
        await until(pilot, lambda: app.state.step == steps)
    return run


async def test_enter_starts_the_default_preset_at_once():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        assert app.query_one("#presets").highlighted.name == "lenet5-digits"
        assert isinstance(app.focused, OptionList)
        run = await started(pilot, app, engine)
        assert run.config().name == "lenet5-digits"
        assert app.screen.has_class("-watching")
        assert isinstance(app.focused, LossChart)
        # The header redraws at a bounded rate: the first steps reach it a moment after the fold.
        await until(pilot, lambda: "running" in str(app.query_one("#header").render()))
        assert app.query_one(ConfigPane).disabled


async def test_space_pauses_and_resumes():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.press("space")
        await until(pilot, lambda: app.state.status == "paused")
        await pilot.press("space")
        await until(pilot, lambda: app.state.status == "running")
        assert [c for c, _ in run.commands] == ["pause", "resume"]
        assert {m.kind for m in app.history.markers} == {"paused", "resumed"}


async def test_x_asks_before_stopping():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmStopScreen)
        await pilot.press("n")
        assert run.commands == []
        await pilot.press("x", "y")
        await until(pilot, lambda: app.state.status == "stopped")
        assert run.commands == [("stop", {})]
        assert not app.screen.has_class("-watching")  # the preset list is back


@pytest.mark.parametrize("key,name", [(remedy.key, remedy.name) for remedy in REMEDIES.values()])
async def test_each_remedy_key_after_an_oom(key, name):
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 256})])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(oom_event(21))
        await until(pilot, lambda: app.state.status == "waiting")
        bar = app.query_one(RemedyBar)
        assert bar.has_class("-open")
        assert "batch 256 -> 128" in bar.plain
        await pilot.press(key)
        await until(pilot, lambda: app.state.status == "running")
        assert run.commands == [("remedy", {"name": name})]
        assert not bar.has_class("-open")
        if name == "halve-batch":
            assert app.query_one("#field-train-batch-size", Input).value == "128"


async def test_an_automatic_remedy_closes_the_bar_without_a_key():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(
            oom_event(21),
            RemedyApplied(
                time=run.now, name="halve-batch", changes={"train.batch_size": [256, 128]}
            ),
        )
        await until(pilot, lambda: "remedy halve-batch" in _log(app))
        assert not app.query_one(RemedyBar).has_class("-open")
        assert run.commands == []


async def test_d_detaches_and_the_run_goes_on():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.press("d")
        assert app.state is None and app.run_link is None
        assert run.status == "running" and run.commands == []
        assert not app.screen.has_class("-watching")
        assert isinstance(app.focused, OptionList)
        run.feed(*training_events(5, start_step=21))  # a detached run is not watched
        await pilot.pause(0.05)
        assert app.state is None


async def test_quit_with_a_live_run_can_leave_it_running():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuitScreen)
        await pilot.press("l")
        await until(pilot, lambda: not app.is_running)
    assert run.commands == []
    assert app.return_value == 0


async def test_quit_with_a_live_run_can_stop_it():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.press("q", "s")
        await until(pilot, lambda: not app.is_running)
    assert run.commands == [("stop", {})]


async def test_quit_with_a_live_run_can_be_cancelled():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot, app, engine)
        await pilot.press("q", "escape")
        assert app.is_running and app.state.live


async def test_quit_when_idle_exits_at_once():
    app = make_app()
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)


def _existing_run(run_id="run-7", steps=300):
    config = make_preset("resnet18-cifar10").config
    return FakeRun(run_id, config, history=[run_started(run_id, config), *training_events(steps)])


async def test_attach_replays_the_history_then_follows():
    run = _existing_run()
    app = make_app(FakeEngine(runs=[run]), attach="run-7")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state is not None)
        # At once, from the run's facts: never "starting, epoch 0, step 0" while the history loads.
        assert (app.state.step, app.state.epoch, app.state.status) == (300, 3, "running")
        assert app.state.preset == "resnet18-cifar10"
        await until(pilot, lambda: app.history.series["loss"].count == 300)
        run.feed(*training_events(10, start_step=301))
        await until(pilot, lambda: app.state.step == 310)


async def test_attach_without_a_ref_takes_the_newest_live_run():
    old, new = _existing_run("run-1", 5), _existing_run("run-2", 5)
    old.status = "finished"
    app = make_app(FakeEngine(runs=[old, new]), attach="")
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.state is not None)
        assert app.state.run_id == "run-2"


async def test_attach_to_nothing_says_so_and_stays_usable():
    app = make_app(FakeEngine(), attach="nope")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "attach: no run matches 'nope'" in _log(app))
        assert app.state is None
        await until(pilot, lambda: app.presets_loaded)


async def test_invalid_value_is_shown_inline_and_start_is_refused():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ConfigPane)
        await until(pilot, lambda: pane.config is not None)
        field = app.query_one("#field-train-batch-size", Input)
        field.focus()
        await pilot.pause()
        field.value = ""
        await pilot.press("minus", "4")
        await until(pilot, lambda: pane.error is not None)
        assert field.value == "-4"
        assert pane.error.startswith("train.batch_size:") and "-4" in pane.error
        assert field.has_class("-invalid") and pane.has_class("-invalid")
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert engine.started == []
        assert "not started: train.batch_size" in _log(app)
        field.value = "32"
        await until(pilot, lambda: pane.error is None)
        await pilot.press("enter")
        await until(pilot, lambda: engine.started)
        assert engine.started[0].config().train.batch_size == 32


async def test_a_broken_preset_is_listed_with_its_error():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        options = app.query_one("#preset-options", OptionList)
        prompts = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert any("broken-example" in p and "broken" in p for p in prompts)
        await pilot.press("up")  # lenet5-digits -> broken-example
        assert app.query_one("#presets").highlighted.name == "broken-example"
        assert "batch_size" in app.query_one(ConfigPane).error
        await pilot.press("enter")
        await pilot.pause(0.05)
        assert engine.started == []
        await pilot.press("down", "enter")  # the rest stay usable
        await until(pilot, lambda: engine.started)


async def test_slash_filters_the_presets():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("slash", "r", "e", "s")
        options = app.query_one("#preset-options", OptionList)
        assert options.option_count == 1
        await pilot.press("enter")  # in the filter: goes to the match, starts nothing
        await pilot.pause(0.2)
        assert not engine.started
        assert app.focused is options
        assert app.query_one(ConfigPane).preset.name == "resnet18-cifar10"
        await pilot.press("enter")  # in the list: the explicit start
        await until(pilot, lambda: engine.started)
        assert engine.started[0].config().name == "resnet18-cifar10"


async def test_a_failed_run_shows_status_and_reason():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(
            Failed(
                time=run.now,
                error="CUDA error: an illegal memory access",
                traceback_path="/runs/x/traceback.txt",
            )
        )
        await until(pilot, lambda: app.state.status == "failed")
        header = str(app.query_one("#header").render())
        assert "failed" in header and "illegal memory access" in header
        assert "traceback.txt" in _log(app)


async def test_a_worker_that_dies_silently_shows_as_crashed():
    engine = FakeEngine()
    app = make_app(engine, liveness_interval=0.02)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.status = "crashed"
        await until(pilot, lambda: app.state.status == "crashed")
        assert "crashed" in str(app.query_one("#header").render())
        assert "CRASHED" in _log(app)
        assert not app.state.live


async def test_bad_events_never_crash_the_app():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(
            {"type": "step", "loss": "abc", "step": None},
            {"type": "oom", "remedies": None},
            {"type": "remedy_applied", "changes": "nonsense"},
            {"type": "epoch_end", "epoch": "x"},
            {"type": "run_started", "config": "notadict"},
            {"type": "failed", "error": 5},
            {"type": "mystery"},
            '{"type": "step", "time": 1e400, "step": 21, "loss": 1e400}',
            {"type": "log", "message": "still fine", "level": "info"},
        )
        await until(pilot, lambda: "still fine" in _log(app))
        app.query_one(LossChart).redraw()
        assert app.is_running and app.state.status == "running" and app.state.step == 21
        assert app.state.unreadable_lines == 7
        assert "7 torn, garbage or wrong-typed line(s) of events.jsonl skipped" in _log(app)


async def test_a_broken_event_stream_is_reported():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        original = engine.start_run

        async def start_broken(config):
            run = await original(config)
            run.events_error = OSError("events.jsonl vanished")
            return run

        engine.start_run = start_broken
        await pilot.press("enter")
        await until(pilot, lambda: "reading events failed" in _log(app))
        assert app.is_running


async def test_a_refused_command_is_reported():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.command_error = "the worker is not answering"
        await pilot.press("space")
        await until(pilot, lambda: "pause refused: the worker is not answering" in _log(app))


async def test_a_start_that_fails_is_reported():
    engine = FakeEngine()
    engine.start_error = "cannot create the run directory"
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("enter")
        await until(pilot, lambda: "could not start" in _log(app))
        assert app.state is None


async def test_chart_keys_change_the_chart():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot, app, engine, steps=150)
        chart = app.query_one(LossChart)
        await pilot.press("s", "l", "t", "v")
        assert (chart.smoothing, chart.log_scale, chart.x_axis, chart.view) == (
            0.97,
            True,
            "epoch",
            "accuracy",
        )
        await until(pilot, lambda: "accuracy" in chart.render().plain)
        await pilot.press("v", "v", "t", "t")
        await until(
            pilot, lambda: "images/s" in chart.render().plain and "x: step" in chart.render().plain
        )


async def test_ctrl_s_saves_a_user_preset():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: engine.saved)
        name, config = engine.saved[0]
        assert name == "lenet5-digits-mine" and config.name == name


async def test_help_opens_with_question_mark_and_f1():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)


async def test_runs_screen_opens_a_run_and_overlays_two():
    from tui.screens.compare import CompareScreen
    from tui.screens.runs import RunsScreen

    runs = [_existing_run("run-1", 120), _existing_run("run-2", 80)]
    app = make_app(FakeEngine(runs=runs))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("o")
        assert isinstance(app.screen, RunsScreen)
        await until(pilot, lambda: len(app.screen.runs) == 2)
        await pilot.press("space", "down", "space", "c")
        assert isinstance(app.screen, CompareScreen)
        chart = app.screen.query_one(LossChart)
        await until(pilot, lambda: len(chart.overlays) == 2)
        await until(pilot, lambda: "run-1" in chart.render().plain)
        await pilot.press("escape")
        await pilot.press("enter")
        await until(pilot, lambda: app.state is not None)
        assert app.state.run_id in ("run-1", "run-2")


async def test_tab_moves_between_panes():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        first = app.focused
        await pilot.press("tab")
        assert app.focused is not first


async def test_too_small_says_the_size_needed():
    app = make_app()
    async with app.run_test(size=(70, 20)) as pilot:
        await pilot.pause(0.05)
        assert app.screen.has_class("-too-small")
        assert "needs at least 80×24" in str(app.query_one("#too-small").render())
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.05)
        assert not app.screen.has_class("-too-small")


async def test_command_palette_offers_the_actions_that_apply():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Start run" in titles and "Stop run" not in titles


async def test_every_binding_has_a_description_tooltip_and_id():
    from textual.binding import Binding

    from tui.screens.compare import CompareScreen
    from tui.screens.runs import RunsScreen
    from tui.widgets.preset_list import PresetFilter, PresetOptions

    for owner in (
        ConvdeckApp,
        HelpScreen,
        ConfirmStopScreen,
        ConfirmQuitScreen,
        RunsScreen,
        CompareScreen,
        PresetFilter,
        PresetOptions,
    ):
        for binding in owner.BINDINGS:
            assert isinstance(binding, Binding)
            assert binding.description and binding.tooltip and binding.id, (owner, binding)


async def test_chart_redraws_at_a_bounded_rate():
    engine = FakeEngine()
    app = make_app(engine, chart_data_interval=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine, steps=0)
        chart = app.query_one(LossChart)
        before = chart.redraws
        for batch in range(40):  # 40 batches in about 0.4 s
            run.feed(*training_events(25, start_step=batch * 25 + 1))
            await pilot.pause(0.01)
        assert app.state.step == 1000
        assert chart.redraws - before <= 3


def _log(app) -> str:
    return "\n".join(app.query_one(LogPane).history)


async def test_a_remedy_mid_run_restarts_the_worker_and_the_chart_keeps_its_history():
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 64})])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine, steps=30)
        await pilot.press("h")  # no OOM: remedies apply whenever a run is live
        await until(pilot, lambda: app.state.resumes == 1 and app.state.phase == "loading")
        assert run.commands == [("remedy", {"name": "halve-batch"})]
        run.feed(*training_events(10, start_step=31))
        await until(pilot, lambda: app.state.step == 40)
        history = app.history
        assert history.series["loss"].count == 40  # before and after the switch
        assert [m.kind for m in history.markers] == ["remedy_applied"]  # one line marks it
        assert history.markers[0].x[0] == 30
        log = _log(app)
        assert "remedy halve-batch: train.batch_size 64 -> 32" in log
        assert "worker restarted" in log and "goes on from step 30" in log
        assert app.query_one("#field-train-batch-size", Input).value == "32"
        chart = app.query_one(LossChart)
        chart.redraw()
        assert "remedy" in chart.render().plain  # the legend names the marker


async def test_between_the_reply_and_the_restart_the_header_says_restarting():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.reply_events = False  # the worker answers now; its restart comes seconds later
        run.feed(oom_event(21))
        await until(pilot, lambda: app.state.status == "waiting")
        await pilot.press("h")
        await until(pilot, lambda: app.state.phase == "restarting")
        assert not app.query_one(RemedyBar).has_class("-open")
        assert "restarting with halve-batch" in str(app.query_one("#header").render())
        assert app.check_action("remedy", ("halve-batch",)) is False  # no second restart
        await pilot.press("h")
        assert len(run.commands) == 1
        run._reply("remedy", {"name": "halve-batch"})  # now the worker's events arrive
        await until(pilot, lambda: app.state.resumes == 1 and app.state.phase != "restarting")
        assert app.state.status == "running"


async def test_typing_a_filter_puts_the_best_match_under_the_cursor():
    presets = [
        make_preset("googlenet-cifar10", "GoogLeNet (Inception v1) on CIFAR-10"),
        make_preset("lenet5-digits", "LeNet-5 on digits"),
        make_preset("lenet5-mnist", "LeNet-5 on MNIST"),
        make_preset("resnet18-cifar10", "ResNet [2,2,2,2] on CIFAR-10"),
    ]
    app = make_app(FakeEngine(presets=presets))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("down", "down")  # from lenet5-digits to resnet18-cifar10
        await pilot.press("slash", "l", "e", "n")
        presets_widget = app.query_one("#presets")
        assert [p.name for p in presets_widget._shown] == [
            "lenet5-digits",
            "lenet5-mnist",
            "googlenet-cifar10",  # only its description matches
        ]
        assert presets_widget.highlighted.name == "lenet5-digits"
        await pilot.press("escape")  # clearing the filter keeps the choice
        assert presets_widget.highlighted.name == "lenet5-digits"


async def test_edits_in_the_config_pane_come_back_after_the_run():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await pilot.press("tab", "tab", "tab", "4", "0")  # the epochs field, typed over
        epochs = app.query_one("#field-train-epochs", Input)
        assert epochs.value == "40"
        await pilot.press("enter")
        await until(pilot, lambda: engine.started and app.state and app.state.live)
        assert engine.started[0].config().train.epochs == 40
        engine.started[0].feed(Finished(time=0.0, reason="completed"))
        await until(pilot, lambda: app.state.status == "finished")
        pane = app.query_one(ConfigPane)
        assert pane.shows_run and pane.disabled  # the ended run's config, until a preset is chosen
        app.query_one("#preset-options").focus()  # as Tab brings it there
        await until(pilot, lambda: not pane.shows_run)
        assert epochs.value == "40"  # not the preset's own 5
        assert not pane.disabled


async def test_after_a_remedy_and_the_end_the_config_pane_shows_the_runs_batch():
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 256})])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(oom_event(21))
        await until(pilot, lambda: app.state.status == "waiting")
        await pilot.press("h")
        await until(pilot, lambda: app.state.revision == 1 and app.state.starts == 2)
        batch = app.query_one("#field-train-batch-size", Input)
        await until(pilot, lambda: batch.value == "128")
        run.status = "finished"
        run.feed(*training_events(5, start_step=21), Finished(time=run.now, reason="completed"))
        await until(pilot, lambda: app.state.status == "finished")
        await pilot.pause(0.3)
        assert batch.value == "128"  # as trained, not the preset's 256
        assert "as trained" in str(app.query_one("#config-about").render())
        await pilot.press("enter")  # a second run starts from the preset, as the pane then shows
        await until(pilot, lambda: len(engine.started) == 2)
        assert engine.started[1].config().train.batch_size == 256


async def test_the_log_scrolls_back_and_follows_again():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        log = app.query_one(LogPane)
        for index in range(30):
            log.note(f"line {index}")
        assert "line 29" in log.render().plain
        log.focus()
        await pilot.press("pageup")
        assert log.scrolled_back > 0 and "line 29" not in log.render().plain
        assert "newer" in str(log.border_subtitle)
        log.note("line 30")  # while reading back, new lines do not move the view
        assert "line 30" not in log.render().plain
        await pilot.press("end")
        assert log.scrolled_back == 0 and "line 30" in log.render().plain


async def test_liveness_asks_for_the_pid_and_never_reads_a_summary_while_alive():
    engine = FakeEngine()
    app = make_app(engine, liveness_interval=0.02)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        summaries = []
        run.summary = lambda: summaries.append(1)  # a full read of the events file
        run.last_log_line = lambda: "Segmentation fault (core dumped)"
        await pilot.pause(0.2)
        assert app.state.live and app.state.pid == 4242
        run.status = "gone"  # the worker's pid no longer answers
        await until(pilot, lambda: app.state.status == "crashed")
        assert "Segmentation fault" in app.state.reason
        assert summaries == []


async def test_a_supervisor_report_marks_the_run_crashed_with_its_reason():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine)
        run.feed(
            WorkerExit(
                time=run.now,
                final_event=False,
                signal="SIGKILL",
                message="killed by SIGKILL: host memory ran low",
            )
        )
        await until(pilot, lambda: app.state.status == "crashed")
        assert "host memory ran low" in str(app.query_one("#header").render())
        assert "worker died: killed by SIGKILL" in _log(app)


async def test_a_long_history_updates_the_widgets_a_few_times_not_per_batch():
    config = make_preset("lenet5-digits").config
    history = [run_started("run-long", config), *training_events(30_000)]
    run = FakeRun("run-long", config, history=history)
    messages = []
    app = make_app(FakeEngine(runs=[run]), attach="run-long")
    async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
        await until(pilot, lambda: app.history is not None and app.history.step == 30_000)
        await pilot.pause(0.3)
        updates = [m for m in messages if type(m).__name__ == "RunEvents"]
        chunks = len(history) // 2000  # what the tail folds in per turn of the event loop
        assert 1 <= len(updates) < chunks / 1.5  # at most one every UI_UPDATE_INTERVAL
        assert sum(m.steps for m in updates) == 30_000
        assert "epoch 300 done" in _log(app)


async def test_a_steady_run_repaints_only_the_tip_of_the_chart():
    config = make_preset("lenet5-digits").config
    # 3,500 steps: the x axis ends at 4,000 and stays there while 100 more come.
    history = [run_started("run-8", config, steps_per_epoch=10_000), *training_events(3_500)]
    run = FakeRun("run-8", config, history=history)
    app = make_app(FakeEngine(runs=[run]), attach="run-8")
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.history is not None and app.history.step == 3_500)
        chart = app.query_one(LossChart)
        chart.redraw()
        await pilot.pause(0.05)
        before = chart.cells_refreshed
        run.feed(*training_events(100, start_step=3_501))
        await until(pilot, lambda: app.state.step == 3_600)
        chart.redraw()
        area = chart.size.width * chart.size.height
        assert 0 < chart.cells_refreshed - before < area / 10


async def test_the_chart_waits_for_the_whole_history_then_draws_it_once():
    run = _existing_run("run-9", 12_000)
    app = make_app(FakeEngine(runs=[run]), attach="run-9")
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one(LossChart)
        plotted_at = []
        plot = chart._plot
        chart._plot = lambda *args: plotted_at.append(app.state.step) or plot(*args)
        await until(pilot, lambda: app.state is not None)
        assert chart.hold  # replaying: partial curves are not redrawn
        await until(pilot, lambda: not chart.hold and "x: step" in chart.render().plain)
        # A first curve at once, then nothing until the whole history is in.
        assert plotted_at[-1] == 12_000
        assert len([step for step in plotted_at if step < 12_000]) <= 1


async def test_until_quiet_announces_the_first_pause_and_loses_no_batch():
    import asyncio

    from tui.app import _until_quiet

    async def stream():
        yield [1]
        yield [2]
        await asyncio.sleep(0.1)  # the history is read; the tail waits for the file
        yield [3]
        await asyncio.sleep(0.1)
        yield [4]

    seen = [batch async for batch in _until_quiet(stream(), quiet=0.03)]
    assert seen == [[1], [2], None, [3], [4]]


async def test_attach_shows_the_runs_own_figures_at_once_and_never_the_preset_keys():
    import asyncio
    import threading

    run = _existing_run("run-5", 850)  # into epoch 9 of ten 100-step epochs
    engine = FakeEngine(runs=[run])
    found, history_read = threading.Event(), asyncio.Event()
    find_run, follow = engine.find_run, run.events

    def slow_find_run(ref):
        found.wait(10)
        return find_run(ref)

    async def slow_events(**kwargs):
        await history_read.wait()
        async for batch in follow(**kwargs):
            yield batch

    engine.find_run, run.events = slow_find_run, slow_events
    app = make_app(engine, attach="run-5")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        # Looking the run up: the preset screen's keys do not apply, and the header says why.
        assert "attaching to run-5" in str(app.query_one("#header").render())
        assert not any(app.check_action(a, ()) for a in ("start", "filter", "save_preset"))
        found.set()
        await until(pilot, lambda: app.state is not None)
        header = str(app.query_one("#header").render())
        assert "running" in header and "epoch 9/10" in header and "step 850" in header
        assert app.check_action("pause_resume", ()) and not app.check_action("start", ())
        history_read.set()  # the history comes in behind it, for the chart
        await until(pilot, lambda: app.history.step == 850 and app.state.step == 850)
        assert "epoch 9/10" in str(app.query_one("#header").render())


async def test_a_run_without_steps_for_long_shows_stalled_and_clears_when_they_resume():
    engine = FakeEngine()
    app = make_app(engine, liveness_interval=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await started(pilot, app, engine, steps=20)
        header = app.query_one("#header")
        last = run.history[-1].time
        engine.now = last + 3600.0  # an hour without a step, the worker alive
        await until(pilot, lambda: "stalled" in str(header.render()))
        assert header.has_class("-stalled")
        engine.now = None  # steps come again: the fake world's clock is their time
        run.feed(*training_events(5, start_step=21, now=last + 1.0))
        await until(pilot, lambda: "running" in str(header.render()))


async def test_L_runs_the_range_test_and_enter_puts_its_rate_in_the_config_pane():
    from test_lr_find import FakeDriver

    engine = FakeEngine()
    engine.rate_finder = FakeDriver()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        await until(pilot, lambda: app.query_one(ConfigPane).preset is not None)
        await pilot.press("L")
        await until(pilot, lambda: getattr(app.screen, "test", None) is not None)
        suggested = app.screen.test.suggested_rate
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one(ConfigPane).values()["train"]["learning_rate"] == suggested)
        assert engine.rate_finder.calls and engine.rate_finder.calls[0][0] == "lenet5-digits"
