"""Out-of-memory remedies end to end: the real CLI, supervisor and worker, injected OOMs.

Every scenario is LeNet-5 on the embedded digits at 28x28 with a handful of
steps, and an OOM injected through ``CONVDECK_FAULTS`` (TensorFlow's own
``ResourceExhaustedError``, raised in the train step). Most of each
scenario's time is the worker importing TensorFlow, once per process image
(a remedy execs a fresh one), so the module fixture starts every scenario's
run at once and the tests then check and steer their own run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import _stop_workers, cli_command, event_dicts

from engine.presets import load_preset
from engine.run.store import read_config, read_config_revisions, summarize_run, worker_alive

PRESET = "lenet5-digits"
SMALL = ["data.image_size=[28, 28]", "train.epochs=1", "train.checkpoint_every=100"]
# Generous: the scenarios start together on a small CPU, beside other test suites.
TIMEOUT = 480.0


class LiveRuns:
    """Real runs started through ``convdeck run --detach``, all in one CONVDECK_HOME."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="cdk-", dir="/tmp"))
        self.dirs: dict[str, Path] = {}

    def env(self, faults: str = "") -> dict:
        env = {**os.environ, "CONVDECK_HOME": str(self.home), "TF_CPP_MIN_LOG_LEVEL": "2"}
        env["CONVDECK_FAULTS"] = faults
        env.pop("CONVDECK_WORKER_MODULE", None)
        return env

    def start(self, name: str, *sets: str, faults: str = "", small: bool = True) -> Path:
        overrides = [*(SMALL if small else []), *sets]
        args = [item for value in overrides for item in ("--set", value)]
        result = self.cli("run", PRESET, *args, "--detach", "--json", faults=faults)
        assert result.returncode == 0, result.stderr
        self.dirs[name] = Path(json.loads(result.stdout.splitlines()[-1])["run_dir"])
        return self.dirs[name]

    def cli(self, *args: str, faults: str = "", timeout: float = TIMEOUT):
        return subprocess.run(
            [*cli_command(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=self.env(faults),
        )

    def events(self, name: str) -> list[dict]:
        return event_dicts(self.dirs[name] / "events.jsonl")

    def of(self, name: str, kind: str) -> list[dict]:
        return [e for e in self.events(name) if e["type"] == kind]

    def status(self, name: str) -> str:
        return summarize_run(self.dirs[name]).status

    def wait(self, name: str, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"{name}: no {what} within {TIMEOUT:g} s\n{self.describe(name)}")

    def wait_status(self, name: str, status: str) -> None:
        self.wait(name, lambda: self.status(name) == status, f"status {status!r}")

    def wait_done(self, name: str) -> dict:
        """The run's last final event, once its worker (and supervisor) are gone."""
        run_dir = self.dirs[name]

        def done() -> bool:
            last = _last_of(self.events(name), ("run_started", "finished", "failed"))
            return (
                last is not None
                and last["type"] != "run_started"
                and worker_alive(run_dir) is None
                and not _supervisor_alive(run_dir)
            )

        self.wait(name, done, "final event")
        return _last_of(self.events(name), ("finished", "failed"))

    def describe(self, name: str) -> str:
        run_dir = self.dirs[name]
        kinds = [e["type"] for e in self.events(name) if e["type"] != "step"]
        try:
            log = (run_dir / "worker.log").read_text()[-2500:]
        except OSError:
            log = ""
        return f"status {self.status(name)}; events {kinds}\nworker.log ends:\n{log}"

    def close(self) -> None:
        _stop_workers(self.home)
        shutil.rmtree(self.home, ignore_errors=True)


def _last_of(events: list[dict], kinds: tuple[str, ...]) -> dict | None:
    return next((e for e in reversed(events) if e["type"] in kinds), None)


def _supervisor_alive(run_dir: Path) -> bool:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "engine.run.supervisor" in cmdline and str(run_dir) in cmdline:
            return process.status() != psutil.STATUS_ZOMBIE
    return False


def steps_of(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e["type"] == "step"]


def kinds_of(events: list[dict], *kinds: str) -> list[str]:
    return [e["type"] for e in events if e["type"] in kinds]


# The runs every test of this module checks, all started before the first test.
SCENARIOS: dict[str, tuple[list[str], str]] = {
    # The former name of halve-batch: old configs still run, read as the new one.
    "halve": (["train.on_oom=halve", "train.steps_per_epoch=10"], "oom:step=3"),
    "ask": (["train.on_oom=ask", "train.steps_per_epoch=10"], "oom:step=4"),
    "accumulate": (["train.on_oom=halve-accumulate", "train.steps_per_epoch=10"], "oom:step=3"),
    "mixed": (["train.on_oom=ask", "train.steps_per_epoch=6"], "oom:step=3"),
    "resnet18": (
        [
            "data.image_size=[32, 32]",
            "data.validation_split=0.05",
            "train.batch_size=16",
            "train.on_oom=resnet18",
            "train.steps_per_epoch=5",
        ],
        "oom:step=3",
    ),
    "floor": (["train.batch_size=1", "train.on_oom=halve-batch"], "oom:batch_size>0"),
    "stop": (["train.on_oom=stop", "train.steps_per_epoch=8"], "oom:step=3"),
}


def start_selected(request: pytest.FixtureRequest, scenarios: dict) -> LiveRuns:
    """Start, all at once, the scenarios whose tests were selected in the calling module.

    A test that uses the ``runs`` fixture names its scenario in its own name,
    so ``-k`` and ``-m "not slow"`` start only the runs that will be checked.
    """
    module = request.module.__name__
    tests = [
        item.name
        for item in request.session.items
        if item.module.__name__ == module and "runs" in getattr(item, "fixturenames", ())
    ]
    live = LiveRuns()
    try:
        for name, (sets, faults) in scenarios.items():
            if any(f"_{name.replace('-', '_')}_" in f"_{test}_" for test in tests):
                live.start(name, *sets, faults=faults)
    except BaseException:
        live.close()
        raise
    return live


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[LiveRuns]:
    live = start_selected(request, SCENARIOS)
    yield live
    live.close()


# ----- unattended policies --------------------------------------------------------------------


def test_halve_policy_restarts_at_half_the_batch_and_the_step_count_goes_on(runs):
    final = runs.wait_done("halve")
    assert final["type"] == "finished" and final["reason"] == "completed", runs.describe("halve")
    events = runs.events("halve")
    (oom,) = runs.of("halve", "oom")
    assert oom["step"] == 3 and oom["batch_size"] == 32 and oom["policy"] == "halve-batch"
    assert "injected by CONVDECK_FAULTS" in oom["message"]
    offered = {remedy["name"]: remedy["effect"] for remedy in oom["remedies"]}
    assert offered["halve-batch"].startswith("batch 32 -> 16")
    assert set(offered) == {"halve-batch", "halve-accumulate", "mixed-precision", "resnet18"}
    (applied,) = runs.of("halve", "remedy_applied")
    assert applied["name"] == "halve-batch" and applied["fresh_model"] is False
    halved = {"train.batch_size": [32, 16], "train.steps_per_epoch": [10, 20]}
    assert applied["changes"] == halved
    # One process image before the remedy, one after; the counter never restarts.
    starts = runs.of("halve", "run_started")
    assert [s["resumed_from_step"] for s in starts] == [None, 2]
    assert starts[1]["config"]["train"]["batch_size"] == 16
    # 64 of the epoch's 10x32 examples were done at 32: 16 more steps of 16 end it.
    assert steps_of(events) == list(range(1, 19))
    assert kinds_of(events, "oom", "remedy_applied", "run_started") == [
        "run_started",
        "oom",
        "remedy_applied",
        "run_started",
    ]
    run_dir = runs.dirs["halve"]
    assert read_config(run_dir).train.batch_size == 16
    (revision,) = read_config_revisions(run_dir)
    assert revision["remedy"] == "halve-batch" and revision["step"] == 2
    assert revision["changes"] == halved
    assert runs.status("halve") == "finished"
    assert runs.of("halve", "worker_exit") == []  # the exec kept the pid: no crash seen


def test_accumulate_policy_halves_the_batch_and_keeps_the_effective_batch(runs):
    final = runs.wait_done("accumulate")
    assert final["type"] == "finished", runs.describe("accumulate")
    (oom,) = runs.of("accumulate", "oom")
    effect = next(r["effect"] for r in oom["remedies"] if r["name"] == "halve-accumulate")
    assert "effective batch stays 32" in effect and "BatchNorm" in effect
    (applied,) = runs.of("accumulate", "remedy_applied")
    assert applied["changes"] == {
        "train.batch_size": [32, 16],
        "train.accumulation_steps": [1, 2],
    }
    config = read_config(runs.dirs["accumulate"]).train
    assert (config.batch_size, config.accumulation_steps) == (16, 2)
    # Two micro-batches of 16 an update: as many updates per epoch as before.
    assert steps_of(runs.events("accumulate")) == list(range(1, 11))


@pytest.mark.slow
def test_resnet18_policy_switches_the_model_and_marks_the_chart(runs):
    final = runs.wait_done("resnet18")
    assert final["type"] == "finished", runs.describe("resnet18")
    (applied,) = runs.of("resnet18", "remedy_applied")
    assert applied["name"] == "resnet18" and applied["fresh_model"] is True
    assert applied["changes"]["model.arch"] == ["lenet5", "resnet"]
    assert applied["changes"]["model.blocks"][1] == [2, 2, 2, 2]
    starts = runs.of("resnet18", "run_started")
    assert starts[0]["model_name"] == "lenet5" and starts[1]["model_name"] == "resnet18"
    assert starts[1]["resumed_from_step"] == 2  # step and data position carried over
    assert steps_of(runs.events("resnet18")) == [1, 2, 3, 4, 5]
    run_dir = runs.dirs["resnet18"]
    # The old model's checkpoints are kept aside, not restored into the new one.
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints.rev0")).endswith("-2")
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("-5")
    assert read_config(run_dir).model.arch == "resnet"


def test_floor_at_batch_size_one_the_policy_stops_instead_of_looping(runs):
    final = runs.wait_done("floor")
    assert final["type"] == "failed", runs.describe("floor")
    assert "batch 1" in final["error"] and "'halve-batch' cannot apply" in final["error"]
    assert "the batch size is already 1" in final["error"]
    (oom,) = runs.of("floor", "oom")  # one OOM, no restart
    assert "halve-batch" not in [r["name"] for r in oom["remedies"]]
    assert runs.of("floor", "remedy_applied") == [] and len(runs.of("floor", "run_started")) == 1
    assert runs.status("floor") == "failed"
    assert runs.of("floor", "worker_exit") == []  # exit 1 after its final event: no crash


# ----- ask: wait for a command ----------------------------------------------------------------


def test_ask_waits_for_a_remedy_and_keeps_the_weights_of_the_last_good_step(runs, tmp_path):
    runs.wait_status("ask", "waiting")
    listed = json.loads(runs.cli("runs", "--json").stdout)
    assert next(r for r in listed if r["run_id"] == runs.dirs["ask"].name)["status"] == "waiting"
    status = runs.cli("ctl", runs.dirs["ask"].name, "status")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "waiting"
    (oom,) = runs.of("ask", "oom")
    assert oom["step"] == 4 and oom["waiting"] is True
    # The checkpoint the OOM left: the weights after step 3, untouched by the failed step 4.
    checkpoints = runs.dirs["ask"] / "checkpoints"
    at_oom = tf.train.latest_checkpoint(str(checkpoints))
    assert at_oom.endswith("-3")
    kept = tmp_path / "at_oom"
    shutil.copytree(checkpoints, kept)
    reference = _three_good_steps(tmp_path / "reference")
    assert_same_weights(str(kept / Path(at_oom).name), reference)

    reply = runs.cli("ctl", runs.dirs["ask"].name, "remedy", "halve-batch")
    assert reply.returncode == 0, reply.stderr
    final = runs.wait_done("ask")
    assert final["type"] == "finished", runs.describe("ask")
    restarted = runs.of("ask", "run_started")[-1]
    assert restarted["resumed_from_step"] == 3
    # 96 of the epoch's 10x32 examples were done at 32: 14 more steps of 16 end it.
    assert steps_of(runs.events("ask")) == list(range(1, 18))
    # The restarted worker trained on from exactly those weights: continuing
    # the kept checkpoint here, at the new batch, gives the same losses.
    worker_losses = {e["step"]: e["loss"] for e in runs.of("ask", "step") if e["step"] > 3}
    here = _continue(kept, runs.dirs["ask"] / "config.toml", tmp_path / "continued")
    assert sorted(here) == sorted(worker_losses) == list(range(4, 18))
    for step, loss in worker_losses.items():
        assert here[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step


def _three_good_steps(run_dir: Path) -> str:
    """The checkpoint after steps 1-3 of the same run, trained in this process without faults."""
    from engine.run.control import ControlState
    from engine.run.events import EventWriter
    from engine.train.faults import parse_faults
    from engine.train.trainer import Trainer

    (run_dir / "checkpoints").mkdir(parents=True)
    config = load_preset(PRESET, [*SMALL, "train.steps_per_epoch=3"])
    with EventWriter(run_dir / "events.jsonl") as events:
        trainer = Trainer(config, run_dir, events, ControlState(), parse_faults(""))
        trainer.setup()
        trainer.run()
    return tf.train.latest_checkpoint(str(run_dir / "checkpoints"))


def _continue(checkpoints: Path, config_toml: Path, run_dir: Path) -> dict[int, float]:
    """Resume a copy of ``checkpoints`` under ``config_toml`` in this process; loss per step."""
    from engine.run.control import ControlState
    from engine.run.events import EventWriter
    from engine.train.faults import parse_faults
    from engine.train.trainer import Trainer

    run_dir.mkdir(parents=True)
    shutil.copytree(checkpoints, run_dir / "checkpoints")
    shutil.copy(config_toml, run_dir / "config.toml")
    with EventWriter(run_dir / "events.jsonl") as events:
        trainer = Trainer(read_config(run_dir), run_dir, events, ControlState(), parse_faults(""))
        trainer.setup(resume=True)
        trainer.run()
    return {
        e["step"]: e["loss"] for e in event_dicts(run_dir / "events.jsonl") if e["type"] == "step"
    }


def assert_same_weights(path_a: str, path_b: str) -> None:
    """Every weight, optimizer slot and the step of two checkpoints are the same.

    Keras 3 models save their trainable weights under the optimizer's
    ``_trainable_variables`` and the rest (BatchNorm statistics) under ``model/``.
    """
    a, b = tf.train.load_checkpoint(path_a), tf.train.load_checkpoint(path_b)
    # Progress and the best-so-far bookkeeping (engine.train.best) are not weights.
    position = ("epoch/", "examples_in_epoch/", "save_counter/", "_CHECKPOINTABLE", "best_", "validations_since_best")
    keys = [key for key in a.get_variable_to_shape_map() if not key.startswith(position)]
    assert sum("_trainable_variables" in key for key in keys) >= 10, keys
    assert set(keys) <= set(b.get_variable_to_shape_map())
    for key in keys:
        np.testing.assert_allclose(
            a.get_tensor(key), b.get_tensor(key), rtol=0, atol=1e-6, err_msg=key
        )


def test_mixed_precision_by_command_restarts_in_16_bit(runs):
    runs.wait_status("mixed", "waiting")
    reply = runs.cli("ctl", runs.dirs["mixed"].name, "remedy", "mixed-precision")
    assert reply.returncode == 0, reply.stderr
    final = runs.wait_done("mixed")
    assert final["type"] == "finished", runs.describe("mixed")
    (applied,) = runs.of("mixed", "remedy_applied")
    assert applied["changes"] == {"train.mixed_precision": [False, True]}
    starts = runs.of("mixed", "run_started")
    assert starts[0]["precision"] == "float32"
    assert starts[1]["precision"] == "mixed_bfloat16"  # a CPU has no float16 maths
    assert steps_of(runs.events("mixed")) == list(range(1, 7))
    assert read_config(runs.dirs["mixed"]).train.mixed_precision is True


# ----- stop, then resume with a remedy --------------------------------------------------------


def test_stop_policy_fails_and_resume_applies_the_remedy(runs):
    failed = runs.wait_done("stop")
    assert failed["type"] == "failed", runs.describe("stop")
    assert "resume with --remedy halve-batch" in failed["error"]
    assert runs.status("stop") == "failed"
    resumed = runs.cli("resume", runs.dirs["stop"].name, "--remedy", "halve-batch")
    assert resumed.returncode == 0, resumed.stderr
    assert "completed" in resumed.stdout and "remedy halve-batch applied" in resumed.stdout
    (applied,) = runs.of("stop", "remedy_applied")
    halved = {"train.batch_size": [32, 16], "train.steps_per_epoch": [8, 16]}
    assert applied["step"] == 2 and applied["changes"] == halved
    # 64 of the epoch's 8x32 examples were done at 32: 12 more steps of 16 end it.
    assert steps_of(runs.events("stop")) == list(range(1, 15))
    assert runs.status("stop") == "finished"


# ----- three OOMs in a row --------------------------------------------------------------------


@pytest.mark.slow
def test_unattended_policy_halves_three_times_down_to_a_batch_that_fits():
    live = LiveRuns()
    try:
        live.start(
            "floor",
            "train.batch_size=64",
            "train.on_oom=halve-batch",
            "train.steps_per_epoch=3",
            faults="oom:batch_size>8",
        )
        final = live.wait_done("floor")
        assert final["type"] == "finished", live.describe("floor")
        ooms = live.of("floor", "oom")
        assert [o["batch_size"] for o in ooms] == [64, 32, 16]
        assert [o["step"] for o in ooms] == [1, 1, 1]
        applied = live.of("floor", "remedy_applied")
        assert [a["changes"]["train.batch_size"] for a in applied] == [[64, 32], [32, 16], [16, 8]]
        assert [r["revision"] for r in read_config_revisions(live.dirs["floor"])] == [1, 2, 3]
        assert read_config(live.dirs["floor"]).train.batch_size == 8
        # The capped epoch keeps its 3x64 examples: 24 steps of 8.
        assert steps_of(live.events("floor")) == list(range(1, 25))
        assert len(live.of("floor", "run_started")) == 4
    finally:
        live.close()
