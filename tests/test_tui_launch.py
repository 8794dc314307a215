"""The preset screen at launch with runs already training, and what the footer, the GPU
panel and the header say at 80 columns (Pilot, fake engine, recorded NVML samples)."""

from pathlib import Path

from engine.gpu import RecordedSource
from engine.run.protocol import EpochEnd, Finished
from tests.fake_engine import FakeEngine, FakeRun, make_preset, oom_event, run_started, training_events
from tests.test_tui_keys import make_app, started, until
from tui.screens.confirm_start import ConfirmStartScreen
from tui.screens.pick_run import PickRunScreen

NVML = Path(__file__).parent / "fixtures" / "nvml"


def live_run(run_id: str, steps: int = 250, **train) -> FakeRun:
    config = make_preset("lenet5-digits", train={"batch_size": 64, **train}).config
    return FakeRun(run_id, config, history=[run_started(run_id, config), *training_events(steps)])


def footer_keys(app) -> list[str]:
    bindings = app.screen.active_bindings.values()
    return [b.binding.key_display or b.binding.key for b in bindings if b.binding.show and b.enabled]


async def test_launch_lists_the_live_runs_and_A_attaches_to_the_only_one():
    engine = FakeEngine(runs=[live_run("run-7")])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.presets_loaded and app.live_runs)
        await pilot.pause(0.1)
        assert "run run-7 trains here: A attaches" in app.query_one("#header").render().plain
        chart = app.query_one("#chart").render().plain
        assert "1 run trains on this machine" in chart and "run-7" in chart and "epoch 3/10" in chart
        assert "No run yet" not in chart
        await pilot.press("A")
        await until(pilot, lambda: app.state is not None and app.state.run_id == "run-7")


async def test_A_with_several_live_runs_asks_which():
    engine = FakeEngine(runs=[live_run("run-1"), live_run("run-2")])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded and len(app.live_runs) == 2)
        await pilot.press("A")
        await until(pilot, lambda: isinstance(app.screen, PickRunScreen))
        await pilot.press("down", "enter")  # newest first: run-2, then run-1
        await until(pilot, lambda: app.state is not None and app.state.run_id == "run-1")


async def test_enter_beside_a_live_run_asks_and_n_starts_nothing():
    engine = FakeEngine(runs=[live_run("run-7")])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded and app.live_runs)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStartScreen))
        assert [f.run_id for f in app.screen.sharing] == ["run-7"]
        await pilot.press("n")
        await pilot.pause(0.2)
        assert not engine.started and app.state is None
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStartScreen))
        await pilot.press("y")
        await until(pilot, lambda: engine.started and app.state is not None and app.state.live)


async def test_a_run_started_while_the_app_is_open_is_found_before_the_next_start():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        engine.runs.append(live_run("run-9"))  # `convdeck run --detach` in another terminal
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmStartScreen))


async def test_a_run_pinned_to_another_gpu_starts_without_a_question():
    preset = make_preset("lenet5-digits", train={"devices": ["/gpu:1"]})
    engine = FakeEngine(presets=[preset], runs=[live_run("run-7", devices=["/gpu:0"])])
    app = make_app(engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded and app.live_runs)
        await pilot.press("enter")
        await until(pilot, lambda: engine.started)
        assert not isinstance(app.screen, ConfirmStartScreen)


async def test_the_footer_shows_the_remedy_keys_while_an_oom_waits_and_they_work_at_any_time():
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 256})])
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        run = await started(pilot, app, engine)
        await pilot.pause(0.1)
        assert footer_keys(app)[:4] == ["space", "x", "d", "question_mark"]
        assert "h/" not in footer_keys(app)
        run.feed(oom_event(21))
        await until(pilot, lambda: app.state.status == "waiting")
        await pilot.pause(0.1)
        keys = footer_keys(app)
        assert ["h/", "a/", "m/", "r"] == [k for k in keys if k[0] in "hamr"] and "space" not in keys
        await pilot.press("h")
        await until(pilot, lambda: run.commands == [("remedy", {"name": "halve-batch"})])
        await until(pilot, lambda: app.state.revision == 1 and app.state.starts == 2)
        run.feed(*training_events(5, start_step=21))
        await until(pilot, lambda: app.state.phase == "training")
        await pilot.press("m")  # no OOM waits: the key still applies the remedy, out of the footer
        await until(pilot, lambda: ("remedy", {"name": "mixed-precision"}) in run.commands)


async def test_without_a_gpu_the_panel_says_so_in_one_row():
    app = make_app(gpu_source=RecordedSource.from_file(NVML / "no_gpu.json"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.presets_loaded and app.query_one("#gpu").polls)
        await pilot.pause(0.1)
        panel = app.query_one("#gpu")
        lines = panel.render().plain.splitlines()
        assert len(lines) == 2 and lines[0].startswith("No NVIDIA GPU") and lines[1].startswith("host")
        assert "NVML could not load libnvidia-ml.so.1" in panel.tooltip  # the whole reason


async def test_a_finished_run_shows_its_validation_accuracy_in_the_header_at_80_columns():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        run = await started(pilot, app, engine, steps=300)
        run.status = "finished"
        run.feed(EpochEnd(time=run.now, epoch=3, step=300, val_loss=0.3, val_accuracy=0.9), Finished(time=run.now))
        await until(pilot, lambda: app.state.status == "finished")
        await pilot.pause(0.3)
        header = app.query_one("#header").render().plain
        best = app.state.best_val_accuracy
        assert "val acc 0.900" in header and f"best {best:.3f}" in header
        assert len(header.rstrip()) <= 78
