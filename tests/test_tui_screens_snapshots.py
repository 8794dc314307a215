"""Snapshots at 80x24 and 100x30 of what issue 11 asked to see as a person would: the launch
screen while a run trains, a finished run, and the OOM bar. Fixed ids and times, a fake
engine and recorded NVML samples, so the pictures are the same on any machine.

The steps to reach each are the ``run_before`` lines; update with ``--snapshot-update``
and read each changed picture's text before keeping it.
"""

import pytest
from conftest import until

from engine.run.protocol import EpochEnd, Finished
from tests.fake_engine import FakeEngine, FakeRun, make_preset, run_started, training_events
from tests.test_tui_snapshots import make_app, settle, training
from tui.widgets.loss_chart import LossChart

SIZES = [(80, 24), (100, 30)]
RUN_ID = "20261202-101500-lenet5-digits"



@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_launch_with_a_live_run(snap_compare, size):
    config = make_preset("lenet5-digits", train={"batch_size": 64}).config
    detached = FakeRun(RUN_ID, config, history=[run_started(RUN_ID, config), *training_events(250)])

    async def run_before(pilot) -> None:
        await settle(pilot)  # `convdeck` while a `run --detach` trains
        await until(pilot, lambda: pilot.app.live_runs)
        await pilot.pause(0.1)

    assert snap_compare(make_app(engine=FakeEngine(runs=[detached])), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_finished_run(snap_compare, size):
    async def run_before(pilot) -> None:
        await training(steps=500)(pilot)  # Enter: lenet5-digits, 5 epochs of 100 steps
        app = pilot.app
        run = app.engine.started[0]
        run.status = "finished"
        last = EpochEnd(time=run.now + 25, epoch=5, step=500, val_loss=0.2, val_accuracy=0.95, loss=0.07, accuracy=0.98)
        run.feed(last, Finished(time=run.now + 26, reason="completed", steps=500))
        await until(pilot, lambda: app.state.status == "finished")
        app.query_one(LossChart).redraw()
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_oom_bar(snap_compare, size):
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 256})])
    assert snap_compare(make_app(engine=engine), terminal_size=size, run_before=training(oom=True))
