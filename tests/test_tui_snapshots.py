"""Snapshot tests, one per feature; the steps to reach each are the pilot lines.

Built by a factory with a fake engine and recorded NVML samples, so the
pictures do not depend on the machine. Update with ``--snapshot-update``.
"""

from pathlib import Path

from engine.gpu import RecordedSource
from tests.fake_engine import FakeEngine, make_preset, oom_event, training_events
from tui.app import ConvdeckApp
from tui.widgets.loss_chart import LossChart

NVML = Path(__file__).parent / "fixtures" / "nvml"


def make_app(gpu: str = "one_gpu", engine: FakeEngine | None = None) -> ConvdeckApp:
    # A GPU poll an hour apart: exactly one sample, so the sparkline is stable.
    return ConvdeckApp(
        engine=engine or FakeEngine(),
        gpu_source=RecordedSource.from_file(NVML / f"{gpu}.json"),
        gpu_interval=3600,
        chart_data_interval=0.0,
    )


async def settle(pilot) -> None:
    app = pilot.app
    for _ in range(200):
        if app.presets_loaded and app.query_one("#gpu").polls:
            break
        await pilot.pause(0.01)
    await pilot.pause(0.2)


def training(steps: int = 250, oom: bool = False):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("enter")  # start lenet5-digits
        app = pilot.app
        for _ in range(200):
            if app.state and app.state.status == "running":
                break
            await pilot.pause(0.01)
        run = app.engine.started[0]
        run.feed(*training_events(steps))
        if oom:
            run.feed(oom_event(steps + 1))
        for _ in range(200):
            if app.state.step == steps and (not oom or app.state.status == "waiting"):
                break
            await pilot.pause(0.01)
        app.query_one(LossChart).redraw()
        await pilot.pause(0.05)

    return run_before


def test_idle(snap_compare):
    assert snap_compare(make_app(), terminal_size=(120, 36), run_before=settle)


def test_training(snap_compare):
    assert snap_compare(make_app(), terminal_size=(120, 36), run_before=training())


def test_oom_remedy_bar(snap_compare):
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 256})])
    app = make_app(engine=engine)
    assert snap_compare(app, terminal_size=(120, 36), run_before=training(oom=True))


def test_no_gpu(snap_compare):
    assert snap_compare(make_app("no_gpu"), terminal_size=(120, 36), run_before=settle)


def test_80x24(snap_compare):
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=training())


def test_help_screen(snap_compare):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.1)

    assert snap_compare(make_app(), terminal_size=(100, 36), run_before=run_before)


def test_eight_gpus(snap_compare):
    assert snap_compare(make_app("eight_gpus"), terminal_size=(140, 40), run_before=training())


def test_too_small(snap_compare):
    assert snap_compare(make_app(), terminal_size=(70, 20), run_before=settle)
