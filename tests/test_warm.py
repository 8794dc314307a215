"""The warm worker (engine.run.warm): loaded ahead, handed one run, gone with its spawner.

Most tests run the warm pair with tests/fake_worker.py (the same protocol,
nothing to load); the slow ones hand a real run to a real warm worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import event_dicts, make_run, started, wait_for

from engine.config import RunConfig
from engine.gpu import RecordedSource
from engine.presets import load_preset
from engine.run import client
from engine.run.lock import EXIT_ALREADY_RUNNING, AlreadyRunning, RunLock
from engine.run.store import LOCK_FILE, create_run_dir
from engine.run.warm import WarmSlot, WarmWorker
from tests.fake_engine import FakeEngine, FakeRun, make_preset
from tui.app import ConvdeckApp
from tui.engine_link import RealEngine

NO_GPU = Path(__file__).parent / "fixtures" / "nvml" / "no_gpu.json"


@pytest.fixture
def warm(convdeck_home, fake_worker):
    """Start warm pairs of the fake worker; each is closed at the end."""
    workers: list[WarmWorker] = []

    def start(**kwargs) -> WarmWorker:
        worker = WarmWorker.start(**kwargs)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def ready(worker: WarmWorker) -> WarmWorker:
    assert wait_for(worker.ready, timeout=60), "the warm worker never said it was ready"
    return worker


def pair(worker: WarmWorker) -> list[psutil.Process]:
    """The warm supervisor and its worker."""
    supervisor = psutil.Process(worker.pid)
    assert wait_for(lambda: supervisor.children(), timeout=30)
    return [supervisor, *supervisor.children()]


def kinds(run_dir: Path) -> list[str]:
    return [event["type"] for event in event_dicts(run_dir / "events.jsonl")]


def test_a_warm_worker_runs_its_run_as_a_cold_start_would(warm, convdeck_home):
    worker = ready(warm())
    warm_process = pair(worker)[1]
    handle = client.start_run_sync(RunConfig(name="fake"), warm=worker)
    assert handle.process.pid == warm_process.pid  # the loaded worker, not a new one
    assert (handle.run_dir / "worker.pid").read_text().split()[0] == str(warm_process.pid)
    assert os.getsid(warm_process.pid) == warm_process.pid  # a session of its own, as a cold worker
    assert handle.wait_exit(30) and handle.exit_code() == 0
    cold = client.start_run_sync(RunConfig(name="fake"))
    assert cold.wait_exit(30) and cold.exit_code() == 0
    assert kinds(handle.run_dir) == kinds(cold.run_dir)
    assert kinds(handle.run_dir)[-1] == "finished" and handle.summary().status == "finished"
    assert (handle.run_dir / "worker.log").exists()


def test_a_warm_pair_takes_one_run_only(warm, convdeck_home):
    worker = ready(warm())
    first = client.start_run_sync(RunConfig(name="fake"), warm=worker)
    second_dir = create_run_dir(RunConfig(name="fake"), convdeck_home)
    assert worker.hand_off(second_dir) is None
    assert worker.supervisor.stdin.closed  # nothing more can reach it
    assert not (second_dir / "events.jsonl").exists() and not (second_dir / "worker.pid").exists()
    assert first.wait_exit(30) and first.exit_code() == 0


def test_closing_ends_the_warm_pair_and_leaves_no_process(warm):
    worker = ready(warm())
    processes = pair(worker)
    worker.close()
    gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive
    assert worker.supervisor.returncode == 0


def test_closing_while_it_still_loads_ends_it_at_once(warm, monkeypatch):
    monkeypatch.setenv("FAKE_LOAD_SECONDS", "600")
    worker = warm()
    processes = pair(worker)
    worker.close()
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive and not worker.ready()


def test_the_warm_pair_ends_when_its_spawner_dies(convdeck_home, fake_worker, tmp_path):
    spawner = textwrap.dedent(
        """
        import sys, time
        from engine.run.warm import WarmWorker
        worker = WarmWorker.start()
        while not worker.ready():
            time.sleep(0.02)
        print(worker.pid, flush=True)
        time.sleep(600)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    try:
        supervisor = psutil.Process(int(process.stdout.readline()))
        processes = [supervisor, *supervisor.children()]
        assert len(processes) == 2
    finally:
        process.kill()  # no close(): the kernel closes its end of the pipe
        process.wait()
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive


def test_a_stale_warm_worker_is_passed_over_for_a_cold_start(warm, convdeck_home, monkeypatch):
    worker = ready(warm())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert "CUDA_VISIBLE_DEVICES" in worker.stale()
    handle = client.start_run_sync(RunConfig(name="fake"), warm=worker)
    assert handle.process.supervisor is not worker.supervisor
    assert handle.wait_exit(30) and handle.exit_code() == 0
    assert worker.usable() is False and worker.used is False  # untouched: its owner closes it


def test_the_uis_own_settings_do_not_make_it_stale(warm, monkeypatch):
    worker = warm()
    monkeypatch.setenv("TEXTUAL_CELL_WIDTH", "9")  # the Eval view's, in the TUI's process
    assert worker.stale() is None


def test_a_change_to_the_code_on_disk_makes_it_stale(warm, tmp_path):
    code = tmp_path / "engine"
    code.mkdir()
    (code / "trainer.py").write_text("STEPS = 1\n")
    worker = warm(code_roots=[code])
    assert worker.stale() is None
    (code / "trainer.py").write_text("STEPS = 22\n")
    assert "code changed" in worker.stale()


def test_a_hand_off_while_it_still_loads_waits_for_it(warm, convdeck_home, monkeypatch):
    monkeypatch.setenv("FAKE_LOAD_SECONDS", "1")
    worker = warm()
    handle = client.start_run_sync(RunConfig(name="fake"), warm=worker)
    assert handle.process.supervisor is worker.supervisor
    assert handle.wait_exit(30) and kinds(handle.run_dir)[-1] == "finished"


def test_a_warm_pair_whose_worker_died_is_passed_over(warm, convdeck_home):
    worker = ready(warm())
    supervisor, warm_process = pair(worker)
    warm_process.kill()
    assert wait_for(lambda: worker.supervisor.poll() is not None, timeout=10)
    assert worker.supervisor.returncode == 0  # it had no run: nothing to report
    handle = client.start_run_sync(RunConfig(name="fake"), warm=worker)
    assert handle.process.supervisor is not worker.supervisor
    assert handle.wait_exit(30) and kinds(handle.run_dir)[-1] == "finished"


def test_a_hand_off_to_an_owned_run_says_already_running(warm, convdeck_home):
    run_dir = make_run(convdeck_home, "r1", [started()], pid="self")
    owner = RunLock.claim(run_dir / LOCK_FILE)  # this test process owns the run
    worker = ready(warm())
    try:
        with pytest.raises(AlreadyRunning):
            worker.hand_off(run_dir, ["--resume"])
        assert worker.supervisor.wait(10) == EXIT_ALREADY_RUNNING  # it left with its worker
    finally:
        owner.release()
    assert kinds(run_dir) == ["run_started"]  # nothing written


def test_the_warm_supervisor_takes_either_a_run_or_warm(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "engine.run.supervisor", "--warm", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "either RUN_DIR or --warm" in result.stderr


# -- the slot the TUI keeps --------------------------------------------------------


class StubWorker:
    """What WarmSlot needs of a WarmWorker."""

    def __init__(self) -> None:
        self.used = False
        self.closed = False
        self.alive = True

    def usable(self) -> bool:
        return not self.used and self.alive

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = self.used = True


def test_the_slot_keeps_one_and_replaces_what_cannot_serve():
    made: list[StubWorker] = []
    slot = WarmSlot(start=lambda: made.append(StubWorker()) or made[-1])
    slot.fill()
    slot.fill()
    assert len(made) == 1 and slot.ready()
    made[0].alive = False  # ended
    slot.fill()
    assert len(made) == 2 and made[0].closed
    taken = slot.take()
    assert taken is made[1] and slot.take() is None
    slot.put_back(taken)  # unused: the start failed before its hand-off
    assert slot.take() is taken
    taken.used = True  # handed a run: the run's now
    slot.put_back(taken)
    assert slot.take() is None and not taken.closed


def test_a_closed_slot_ends_its_worker_and_starts_no_other():
    made: list[StubWorker] = []
    slot = WarmSlot(start=lambda: made.append(StubWorker()) or made[-1])
    slot.fill()
    slot.close()
    slot.fill()
    assert len(made) == 1 and made[0].closed and slot.take() is None


def test_the_replacement_waits_until_the_run_it_follows_has_stepped(tmp_path):
    made: list[StubWorker] = []
    slot = WarmSlot(start=lambda: made.append(StubWorker()) or made[-1])
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "step", "time": 1.0, "step": 9}) + "\n")  # an earlier worker's
    run = client.RunHandle(tmp_path, spawn_offset=events.stat().st_size)
    run.is_alive = lambda: True
    waiting = threading.Thread(target=slot.fill_once_running, args=(run,))
    waiting.start()
    with open(events, "a") as handle:
        handle.write(json.dumps({"type": "run_started", "time": 2.0}) + "\n")
    time.sleep(0.6)
    assert not made  # loading TensorFlow now would slow the run's start
    with open(events, "a") as handle:
        handle.write(json.dumps({"type": "step", "time": 3.0, "step": 10}) + "\n")
    waiting.join(10)
    assert len(made) == 1


# -- the real worker ---------------------------------------------------------------


def test_loading_for_a_run_touches_no_device():
    code = (
        "from engine.train.preload import load_for_training\n"
        "load_for_training()\n"
        "import sys\n"
        "from tensorflow.python.eager import context\n"
        "ctx = context.context()\n"
        "assert 'sklearn.datasets' in sys.modules and 'engine.train.trainer' in sys.modules\n"
        "assert ctx._context_handle is None, 'the eager context (and its devices) was initialised'\n"
        "assert ctx._physical_devices is None, 'devices were listed'\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240, env=env)


@pytest.mark.slow
def test_a_real_warm_worker_trains_a_run_like_a_cold_start(convdeck_home):
    config = load_preset("lenet5-digits", ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=3"])
    worker = WarmWorker.start()
    try:
        assert wait_for(worker.ready, timeout=240)
        warm_run = client.start_run_sync(config, warm=worker)
        assert warm_run.process.supervisor is worker.supervisor
        assert warm_run.wait_exit(240) and warm_run.exit_code() == 0
    finally:
        worker.close()
    cold_run = client.start_run_sync(config)
    assert cold_run.wait_exit(240) and cold_run.exit_code() == 0
    assert _collapsed(kinds(warm_run.run_dir)) == _collapsed(kinds(cold_run.run_dir))
    warm_started, cold_started = (_run_started(r.run_dir) for r in (warm_run, cold_run))
    assert warm_started["config"] == {**cold_started["config"], "name": warm_started["config"]["name"]}
    assert warm_started["pid"] == warm_run.process.pid
    log = (warm_run.run_dir / "worker.log").read_text()
    assert "Traceback" not in log
    assert json.loads((warm_run.run_dir / "eval.json").read_text())


@pytest.mark.slow
def test_a_warm_started_run_restarts_for_a_remedy_as_a_cold_one_does(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:step=2")  # in the warm worker's environment from its start
    overrides = ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=3", "train.on_oom=halve-batch"]
    worker = WarmWorker.start()
    try:
        run = client.start_run_sync(load_preset("lenet5-digits", overrides), warm=worker)
        assert run.process.supervisor is worker.supervisor
        assert run.wait_exit(300) and run.exit_code() == 0
    finally:
        worker.close()
    events = event_dicts(run.run_dir / "events.jsonl")
    types = [event["type"] for event in events]
    assert types.count("run_started") == 2 and "remedy_applied" in types and types[-1] == "finished", types
    # The remedy's exec kept the pid (and the lock): the same process, supervised to the end.
    assert {event["pid"] for event in events if event["type"] == "run_started"} == {run.process.pid}
    assert any(event.get("restarting") == "halve-batch" for event in events if event["type"] == "log")


def _run_started(run_dir: Path) -> dict:
    return next(event for event in event_dicts(run_dir / "events.jsonl") if event["type"] == "run_started")


def _collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same type merged (steps come batched differently)."""
    return [kind for i, kind in enumerate(types) if i == 0 or types[i - 1] != kind]


async def test_the_tuis_engine_hands_its_run_to_the_warm_worker_and_keeps_a_new_one(convdeck_home, fake_worker):
    engine = RealEngine(convdeck_home)
    engine.warm_up()
    try:
        assert wait_for(lambda: engine.warm.ready(), timeout=60)
        first = engine.warm._worker  # noqa: SLF001 - which pair the run goes to
        run = await engine.start_run(RunConfig(name="fake"))
        assert run.process.supervisor is first.supervisor
        assert wait_for(lambda: engine.warm.ready(), timeout=60)  # replaced once the run stepped
        replacement = pair(engine.warm._worker)  # noqa: SLF001
        assert run.wait_exit(30) and kinds(run.run_dir)[-1] == "finished"
    finally:
        engine.close()
    _, alive = psutil.wait_procs(replacement, timeout=10)
    assert not alive


# -- the TUI -----------------------------------------------------------------------


def make_app(engine: FakeEngine, **kwargs) -> ConvdeckApp:
    return ConvdeckApp(engine=engine, gpu_source=RecordedSource.from_file(NO_GPU), gpu_interval=3600, **kwargs)


async def until(pilot, condition, timeout: float = 10.0) -> None:
    assert await _within(pilot, condition, timeout), "condition not reached in time"


async def _within(pilot, condition, timeout: float) -> bool:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        await pilot.pause(0.01)
    return condition()


async def test_the_app_warms_a_worker_while_its_presets_show_and_lets_go_as_it_exits():
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.presets_loaded)
        assert engine.warm_ups == 1 and engine.closed == 0
    assert engine.closed == 1


async def test_the_app_attached_to_a_run_warms_none():
    engine = FakeEngine(runs=[FakeRun("run-001", make_preset("lenet5-digits").config)])
    app = make_app(engine, attach="run-001")
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.presets_loaded and app.state is not None)
        assert engine.warm_ups == 0
    assert engine.closed == 1
