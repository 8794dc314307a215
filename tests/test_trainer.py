"""engine.train.trainer driven in-process, and engine.train.worker as a real process.

Every run is LeNet-5 on the embedded digits at 28x28 with a handful of
steps, so the whole file trains on a CPU in about a minute. Runs hook the
event writer to act at exact points (stop at a step, snapshot the weights a
checkpoint saved, pause from another thread) instead of sleeping.
"""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import wait_for

from engine.config import RunConfig
from engine.presets import load_preset
from engine.run.control import ControlState
from engine.run.events import EventWriter, read_events
from engine.run.store import create_run_dir
from engine.train.faults import parse_faults
from engine.train.trainer import OutOfMemory, Trainer
from engine.train.xla import use_xla

PRESET = "lenet5-digits"
SMALL = ["data.image_size=[28, 28]"]
# The reference run: 3 epochs of 10 steps, a checkpoint every 4 steps.
REFERENCE = [*SMALL, "train.epochs=3", "train.steps_per_epoch=10", "train.checkpoint_every=4"]
LEARNING_RATE = 2e-3  # the preset's
BATCH = 32  # the preset's
WAIT = 60.0  # seconds a test thread waits for the trainer before giving up


class Crash(Exception):
    """Stands in for the worker dying mid-run (raised from an event hook)."""


class HookedWriter(EventWriter):
    """An EventWriter that keeps every event in memory and calls ``hook`` after each."""

    def __init__(self, path: Path, hook: Callable[[dict], None] | None = None) -> None:
        super().__init__(path, flush_interval=0.0)
        self.hook = hook
        self.events: list[dict] = []

    def emit(self, type: str, **fields) -> dict:
        event = super().emit(type, **fields)
        self.events.append(event)
        if self.hook is not None:
            self.hook(event)
        return event


@dataclass
class Run:
    """One Trainer on one run directory, with what its hooks recorded."""

    trainer: Trainer
    writer: HookedWriter
    control: ControlState
    run_dir: Path
    result: str | None = None
    error: BaseException | None = None
    calls: list[int] = field(default_factory=list)  # steps per tf.function call
    compiled: Any = None  # the trainer's own compiled multi-step function
    saved: dict[int, dict] = field(default_factory=dict)  # checkpoint step -> state then

    @property
    def events(self) -> list[dict]:
        return self.writer.events

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def steps(self) -> list[int]:
        return [e["step"] for e in self.of("step")]

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.of("step")}


def config(*overrides: str, home: Path | None = None) -> RunConfig:
    return load_preset(PRESET, list(overrides), home=home)


def new_run_dir(root: Path, name: str = "run") -> Path:
    run_dir = root / name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def start(
    run_dir: Path,
    overrides: list[str],
    *,
    faults: str = "",
    resume: bool = False,
    hook: Callable[[Run, dict], None] | None = None,
    snapshot_checkpoints: bool = False,
) -> Run:
    """A set-up Trainer (not yet run); ``hook(run, event)`` sees every event."""
    control = ControlState()
    holder: list[Run] = []

    def on_event(event: dict) -> None:
        if not holder:
            return
        run = holder[0]
        if snapshot_checkpoints and event["type"] == "checkpoint":
            run.saved[event["step"]] = snapshot(run.trainer)
        if hook is not None:
            hook(run, event)

    writer = HookedWriter(run_dir / "events.jsonl", on_event)
    trainer = Trainer(
        config(*overrides, home=run_dir), run_dir, writer, control, parse_faults(faults)
    )
    trainer.setup(resume=resume)
    run = Run(trainer, writer, control, run_dir)
    holder.append(run)
    real_calls = run.compiled = trainer._train_calls

    def counted(iterator, steps, nan_step):
        run.calls.append(int(steps))
        return real_calls(iterator, steps, nan_step)

    trainer._train_calls = counted
    return run


def finish(run: Run) -> Run:
    """Run the trainer to its end; an exception is kept in ``run.error``."""
    try:
        run.result = run.trainer.run()
    except (OutOfMemory, Crash, tf.errors.OpError) as error:
        run.error = error
    finally:
        run.writer.close()
    return run


def train(run_dir: Path, overrides: list[str], **kwargs) -> Run:
    return finish(start(run_dir, overrides, **kwargs))


def snapshot(trainer: Trainer) -> dict:
    return {
        "weights": [w.copy() for w in trainer.model.get_weights()],
        "optimizer": [np.array(v.numpy()) for v in trainer.optimizer.variables],
        "iterations": int(trainer.optimizer.iterations.numpy()),
    }


def assert_same_arrays(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def checkpoint_files(run_dir: Path) -> list[str]:
    """Every checkpoint prefix on disk (not only those the manager lists)."""
    return sorted(
        p[: -len(".index")] for p in glob.glob(str(run_dir / "checkpoints" / "ckpt-*.index"))
    )


def checkpoint_step(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


def non_finite_tensors(prefix: str) -> list[str]:
    """Names of the floating tensors in a checkpoint that hold a NaN or Inf."""
    reader = tf.train.load_checkpoint(prefix)
    bad = []
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(name))):
            bad.append(name)
    return bad


def assert_consecutive(steps: list[int], first: int = 1) -> None:
    assert steps == list(range(first, first + len(steps))), steps


@pytest.fixture(autouse=True)
def float32_policy():
    """The Keras dtype policy is global: leave it as float32 whatever a test set."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Run:
    """One uninterrupted run of REFERENCE, snapshotting the state at each checkpoint."""
    run_dir = new_run_dir(tmp_path_factory.mktemp("reference"))
    return train(run_dir, REFERENCE, snapshot_checkpoints=True)


# ----- a whole run --------------------------------------------------------------


def test_run_emits_one_step_event_per_update_and_the_lifecycle_events(reference):
    assert reference.error is None and reference.result == "completed"
    events = reference.events
    assert events[0]["type"] == "run_started"
    started = events[0]
    assert (started["steps_per_epoch"], started["epochs"], started["total_steps"]) == (10, 3, 30)
    assert started["resumed_from_step"] is None
    assert started["config"]["train"]["epochs"] == 3

    # One step event per optimizer update, numbered 1..30, although calls ran several steps.
    assert_consecutive(reference.steps())
    assert sum(reference.calls) == 30
    assert max(reference.calls) > 1, reference.calls
    assert int(reference.trainer.optimizer.iterations.numpy()) == 30
    for event in reference.of("step"):
        assert event["epoch"] == (event["step"] - 1) // 10 + 1
        for key in ("loss", "accuracy", "learning_rate", "images_per_sec"):
            assert math.isfinite(event[key]), event
        assert 0.0 <= event["accuracy"] <= 1.0

    ends = reference.of("epoch_end")
    assert [e["epoch"] for e in ends] == [1, 2, 3]
    for end in ends:
        assert math.isfinite(end["val_loss"]) and 0.0 <= end["val_accuracy"] <= 1.0
        # Validation comes after the epoch's last step and before the next epoch's first.
        index = events.index(end)
        before = [e["step"] for e in events[:index] if e["type"] == "step"]
        assert before[-1] == 10 * end["epoch"]

    saved = {e["step"] for e in reference.of("checkpoint")}
    # Every 4 steps counted from the last save, epoch ends included.
    assert {4, 8, 10, 14, 18, 20, 24, 28, 30} <= saved
    for event in reference.of("checkpoint"):
        assert checkpoint_step(event["path"]) == event["step"]
    assert Path(reference.of("checkpoint")[-1]["path"] + ".index").exists()
    assert checkpoint_step(tf.train.latest_checkpoint(str(reference.run_dir / "checkpoints"))) == 30

    finished = events[-1]
    assert finished["type"] == "finished"
    assert finished["reason"] == "completed"
    assert finished["steps"] == 30
    # The file holds what was emitted, in order.
    on_disk = read_events(reference.run_dir / "events.jsonl")
    assert [e.type for e in on_disk] == [e["type"] for e in events]


def test_loss_falls_over_a_few_epochs_on_digits(reference):
    losses = [e["loss"] for e in reference.of("step")]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    val = [e["val_loss"] for e in reference.of("epoch_end")]
    assert val[-1] < val[0], val
    assert reference.of("epoch_end")[-1]["val_accuracy"] > 0.5


def test_tensorboard_summaries_are_written(reference):
    files = list((reference.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    tags = set()
    for path in files:
        for record in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in record.summary.value)
    epoch_tags = {"train/epoch_loss", "train/epoch_accuracy", "val/loss", "val/accuracy"}
    assert {"train/loss", "train/accuracy", *epoch_tags} <= tags


def test_final_model_is_saved_as_model_keras(reference):
    path = reference.run_dir / "model.keras"
    loaded = keras.saving.load_model(path)
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype("float32")
    expected = reference.trainer.model(images, training=False)
    np.testing.assert_allclose(loaded(images, training=False), expected, rtol=1e-5, atol=1e-5)


# ----- checkpoints and exact resume -------------------------------------------------


def test_one_iterator_serves_the_run_with_each_epochs_batches_and_a_new_one_never_retraces(tmp_path):
    """Later epochs are made inside tf.data: no iterator (nor trace) per epoch, and the batches
    of every epoch are ``train_for_epoch``'s (the order a resume reproduces)."""
    run = start(new_run_dir(tmp_path), [*SMALL, "train.epochs=3", "train.steps_per_epoch=4"])
    trainer, made = run.trainer, []
    make_iterator = trainer._iterator_at

    def counted(epoch: int, examples_in_epoch: int):
        iterator = make_iterator(epoch, examples_in_epoch)
        if not made or iterator is not made[-1]:
            made.append(iterator)
        return iterator

    trainer._iterator_at = counted
    assert finish(run).result == "completed"
    assert len(made) == 1 and len(run.steps()) == 12
    # A jump (as a NaN rewind makes one): a new iterator, the same compiled loop.
    run.compiled(trainer._iterator_at(1, 2 * BATCH), tf.constant(2), tf.constant(-1, tf.int64))
    assert run.compiled.experimental_get_tracing_count() == 1
    assert trainer._evaluate.experimental_get_tracing_count() == 1  # traced before the first step
    iterator = trainer._iterator_at(1, 2 * BATCH)
    got = [next(iterator) for _ in range(2 + 4)]
    expected = [*list(trainer.data.train_for_epoch(1, 2))[:2], *list(trainer.data.train_for_epoch(2))[:4]]
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)


def test_resume_restores_weights_optimizer_step_and_data_position(tmp_path, reference):
    run_dir = new_run_dir(tmp_path)

    def crash_after_checkpoint_8(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] > 8:
            raise Crash()  # the worker dies between checkpoints

    crashed = train(run_dir, REFERENCE, hook=crash_after_checkpoint_8, snapshot_checkpoints=True)
    assert isinstance(crashed.error, Crash)
    saved = crashed.saved[8]
    assert saved["iterations"] == 8
    assert checkpoint_step(tf.train.latest_checkpoint(str(run_dir / "checkpoints"))) == 8

    resumed = start(run_dir, REFERENCE, resume=True)
    # The weights and the optimizer state are exactly those the checkpoint saved.
    assert_same_arrays(resumed.trainer.model.get_weights(), saved["weights"])
    assert int(resumed.trainer.optimizer.iterations.numpy()) == 8
    assert_same_arrays(
        [np.array(v.numpy()) for v in resumed.trainer.optimizer.variables], saved["optimizer"]
    )
    moments = [
        v
        for v in resumed.trainer.optimizer.variables
        if v.shape == resumed.trainer.model.weights[0].shape
    ]
    assert any(np.any(v.numpy() != 0) for v in moments), "Adam moments were not restored"

    finish(resumed)
    assert resumed.error is None and resumed.result == "completed"
    assert resumed.events[0]["type"] == "run_started"
    assert resumed.events[0]["resumed_from_step"] == 8
    # The step counter continues, and epoch 1 still ends at step 10 with validation.
    assert_consecutive(resumed.steps(), first=9)
    assert resumed.steps()[-1] == 30
    assert [e["epoch"] for e in resumed.of("epoch_end")] == [1, 2, 3]
    assert resumed.of("epoch_end")[0]["step"] == 10
    # Same data in the same order from the same weights: the uninterrupted run's losses.
    expected = reference.losses()
    got = resumed.losses()
    np.testing.assert_allclose(
        [got[s] for s in range(9, 31)], [expected[s] for s in range(9, 31)], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        resumed.trainer.model.get_weights()[0],
        reference.trainer.model.get_weights()[0],
        rtol=1e-3,
        atol=1e-5,
    )


def test_stop_checkpoints_the_current_step_and_resume_continues_from_it(tmp_path, reference):
    run_dir = new_run_dir(tmp_path)
    overrides = [*SMALL, "train.epochs=3", "train.steps_per_epoch=10", "train.checkpoint_every=100"]

    def stop_at_step_2(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] == 2:
            run.control.request("stop")

    stopped = train(run_dir, overrides, hook=stop_at_step_2)
    assert stopped.error is None
    assert stopped.result == "stopped"
    last = stopped.steps()[-1]
    assert 2 <= last < 10  # mid-epoch: the next call never started
    assert_consecutive(stopped.steps())
    # The stop itself saved this step (checkpoint_every is far away).
    # (step 0 is the restore point saved before the first step)
    assert [e["step"] for e in stopped.of("checkpoint") if e["step"]] == [last]
    assert checkpoint_step(tf.train.latest_checkpoint(str(run_dir / "checkpoints"))) == last
    finished = stopped.events[-1]
    assert (
        finished["type"] == "finished"
        and finished["reason"] == "stopped"
        and finished["steps"] == last
    )
    weights_at_stop = stopped.trainer.model.get_weights()

    resumed = start(run_dir, overrides, resume=True)
    assert_same_arrays(resumed.trainer.model.get_weights(), weights_at_stop)
    finish(resumed)
    assert resumed.result == "completed"
    assert resumed.events[0]["resumed_from_step"] == last
    assert_consecutive(resumed.steps(), first=last + 1)
    assert resumed.events[-1]["steps"] == 30
    # checkpoint_every does not change the arithmetic: the reference run's losses.
    expected = reference.losses()
    got = resumed.losses()
    steps = range(last + 1, 31)
    np.testing.assert_allclose(
        [got[s] for s in steps], [expected[s] for s in steps], rtol=1e-4, atol=1e-5
    )
    # Both runs' events share the file, in order.
    types = [e.type for e in read_events(run_dir / "events.jsonl")]
    assert types.count("run_started") == 2 and types.count("finished") == 2


def test_resume_with_no_checkpoint_starts_from_step_one(tmp_path):
    run = train(
        new_run_dir(tmp_path), [*SMALL, "train.epochs=1", "train.steps_per_epoch=2"], resume=True
    )
    assert run.result == "completed"
    assert run.events[0]["resumed_from_step"] is None
    assert run.steps() == [1, 2]


# ----- control commands ---------------------------------------------------------------


def test_pause_from_another_thread_then_resume_loses_no_step(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=12", "train.checkpoint_every=100"]
    # Calls of 3 steps: one ends at step 3, so the pause sent then lands before the next.
    overrides.append("train.steps_per_call=3")
    pause_sent, paused_seen = threading.Event(), threading.Event()
    reached_step_3 = threading.Event()
    status_while_paused: list[dict] = []

    def hook(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] == 3:
            reached_step_3.set()
            assert pause_sent.wait(WAIT)  # the pause lands before the loop looks again
        if event["type"] == "paused":
            paused_seen.set()

    run = start(new_run_dir(tmp_path), overrides, hook=hook)

    def operator() -> None:
        try:
            if reached_step_3.wait(WAIT):
                run.control.request("pause")
            pause_sent.set()
            if paused_seen.wait(WAIT):
                # The loop publishes its status just after the paused event.
                wait_for(lambda: run.control.status.get("state") == "paused", timeout=WAIT)
                status_while_paused.append(run.control.request("status"))
                run.control.request("checkpoint")  # a checkpoint while paused
                threading.Event().wait(0.3)
        finally:
            run.control.request("resume")

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    finish(run)
    thread.join(WAIT)

    assert run.result == "completed"
    assert_consecutive(run.steps())
    assert run.steps()[-1] == 12
    types = [e["type"] for e in run.events]
    assert types.count("paused") == 1 and types.count("resumed") == 1
    paused_at, resumed_at = types.index("paused"), types.index("resumed")
    assert paused_at < resumed_at
    paused, resumed = run.events[paused_at], run.events[resumed_at]
    last_before = [e["step"] for e in run.events[:paused_at] if e["type"] == "step"][-1]
    assert paused["step"] == resumed["step"] == last_before
    between = run.events[paused_at + 1 : resumed_at]
    assert not [e for e in between if e["type"] == "step"]
    assert [e["step"] for e in between if e["type"] == "checkpoint"] == [last_before]
    first_after = [e["step"] for e in run.events[resumed_at:] if e["type"] == "step"][0]
    assert first_after == last_before + 1
    assert status_while_paused and status_while_paused[0]["paused"] is True
    assert status_while_paused[0]["state"] == "paused"
    assert status_while_paused[0]["step"] == last_before


def test_checkpoint_command_saves_at_the_current_step(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=12", "train.checkpoint_every=100"]

    def hook(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] == 2:
            run.control.request("checkpoint")

    run = train(new_run_dir(tmp_path), overrides, hook=hook)
    assert run.result == "completed"
    checkpoints = [e for e in run.of("checkpoint") if e["step"]]  # past the step-0 restore point
    first = checkpoints[0]
    assert 2 <= first["step"] < 12
    index = run.events.index(first)
    assert [e["step"] for e in run.events[:index] if e["type"] == "step"][-1] == first["step"]
    assert first["step"] in [checkpoint_step(p) for p in checkpoint_files(run.run_dir)]
    assert checkpoints[-1]["step"] == 12  # the epoch's end
    assert_consecutive(run.steps())


def test_stop_with_a_reason_ends_the_run_with_it(tmp_path):
    """A sweep's pruner stops a trial with ``stop pruned``: its finished event says pruned."""
    overrides = [*SMALL, "train.epochs=2", "train.steps_per_epoch=6", "train.checkpoint_every=100"]

    def prune_at_step_2(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] == 2:
            assert run.control.request("stop", "pruned")["ok"]

    run = train(new_run_dir(tmp_path), overrides, hook=prune_at_step_2)
    assert run.result == "pruned"
    finished = run.events[-1]
    assert finished["type"] == "finished" and finished["reason"] == "pruned"
    assert 2 <= finished["steps"] < 6
    # Saved where it stopped, as any stop is.
    assert checkpoint_step(tf.train.latest_checkpoint(str(run.run_dir / "checkpoints"))) == finished["steps"]


def test_eval_command_evaluates_the_current_weights_and_training_goes_on(tmp_path):
    # A validation at step 3, then the eval asked for at step 3: both see the same weights.
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=6", "train.val_every_steps=3"]

    def eval_at_step_3(run: Run, event: dict) -> None:
        if event["type"] == "step" and event["step"] == 3:
            run.control.request("eval")

    run = train(new_run_dir(tmp_path), overrides, hook=eval_at_step_3)
    assert run.result == "completed"
    assert_consecutive(run.steps())
    assert run.steps()[-1] == 6
    (evaluated,) = run.of("eval")  # the run's end is not evaluated: evaluate_at_end is the worker's
    assert (evaluated["step"], evaluated["trigger"], evaluated["split"], evaluated["weights"]) == (
        3,
        "command",
        "validation",
        "last",
    )
    index = run.events.index(evaluated)
    assert [e["step"] for e in run.events[index:] if e["type"] == "step"][0] == 4  # then it trained on
    (validation,) = [e for e in run.of("validation") if e["step"] == 3]
    assert evaluated["accuracy"] == pytest.approx(validation["val_accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(validation["val_loss"], abs=1e-4)
    assert evaluated["examples"] == 360 and len(evaluated["worst_classes"]) == 3
    report = json.loads((run.run_dir / "eval.json").read_text())
    assert report["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)
    assert evaluated["path"] == str(run.run_dir / "eval.json")
    worst = sorted(report["classes"], key=lambda c: (c["f1"], -c["support"], c["index"]))[:3]
    assert evaluated["worst_classes"] == [c["name"] for c in worst]
    assert list((run.run_dir / "mistakes").glob("*.png"))


# ----- run health: NaN ---------------------------------------------------------------------


def assert_no_nan_checkpoint(run_dir: Path) -> None:
    files = checkpoint_files(run_dir)
    for prefix in files:
        assert not non_finite_tensors(prefix), (
            f"{prefix} holds NaN weights: {non_finite_tensors(prefix)[:3]}"
        )


@pytest.mark.parametrize("policy", ["pause", "stop"])
def test_nan_loss_reports_once_and_never_checkpoints_nan_weights(tmp_path, policy):
    overrides = [
        *SMALL,
        "train.epochs=1",
        "train.steps_per_epoch=12",
        "train.checkpoint_every=4",
        f"train.on_nan={policy}",
    ]

    def stop_when_paused(run: Run, event: dict) -> None:
        if event["type"] == "paused":
            run.control.request("stop")

    run = train(new_run_dir(tmp_path), overrides, faults="nan:step=6", hook=stop_when_paused)
    assert run.error is None
    nans = run.of("nan")
    assert [e["step"] for e in nans] == [6]
    types = [e["type"] for e in run.events]
    after_nan = run.events[types.index("nan") + 1 :]
    # The steps before the NaN are reported as usual.
    before = [e["step"] for e in run.events[: types.index("nan")] if e["type"] == "step"]
    assert_consecutive(before)
    assert before[-1] == 5
    if policy == "pause":
        assert "paused" in types[types.index("nan") :]
        until_paused = after_nan[: [e["type"] for e in after_nan].index("paused")]
        assert not [e for e in until_paused if e["type"] == "step"], until_paused
        assert run.result == "stopped"
    else:
        assert not [e for e in after_nan if e["type"] == "step"], after_nan
        assert run.result == "nan"
        assert run.events[-1]["reason"] == "nan"
    assert run.events[-1]["type"] == "finished"
    assert checkpoint_files(run.run_dir)
    assert_no_nan_checkpoint(run.run_dir)
    assert max(checkpoint_step(p) for p in checkpoint_files(run.run_dir)) < 6
    assert all(np.all(np.isfinite(w)) for w in run.trainer.model.get_weights())


def test_nan_before_any_checkpoint_saves_no_nan_weights(tmp_path):
    overrides = [
        *SMALL,
        "train.epochs=1",
        "train.steps_per_epoch=12",
        "train.checkpoint_every=100",
        "train.on_nan=stop",
    ]
    run = train(new_run_dir(tmp_path), overrides, faults="nan:step=2")
    assert run.result == "nan"
    assert [e["step"] for e in run.of("nan")] == [2]
    assert_no_nan_checkpoint(run.run_dir)


def test_run_paused_by_nan_completes_after_resume(tmp_path):
    # The whole digits epoch (44 batches), NaN near its end: resuming must not run out of data.
    overrides = [*SMALL, "train.epochs=1", "train.checkpoint_every=40"]

    def resume_when_paused(run: Run, event: dict) -> None:
        if event["type"] == "paused":
            run.control.request("resume")

    run = train(new_run_dir(tmp_path), overrides, faults="nan:step=43", hook=resume_when_paused)
    assert run.error is None, repr(run.error)
    assert run.result == "completed"
    assert [e["step"] for e in run.of("nan")] == [43]
    assert run.events[-1]["type"] == "finished" and run.events[-1]["steps"] == 44
    assert math.isfinite(run.events[-1]["loss"])
    assert_no_nan_checkpoint(run.run_dir)


# ----- out of memory -----------------------------------------------------------------------


def test_oom_at_a_step_raises_and_leaves_the_weights_of_the_step_before(tmp_path, reference):
    run = train(new_run_dir(tmp_path), REFERENCE, faults="oom:step=5", snapshot_checkpoints=True)
    assert isinstance(run.error, OutOfMemory)
    assert run.error.step == 5
    assert run.error.batch_size == BATCH
    assert "OOM" in run.error.message and "\n" not in run.error.message
    assert run.steps() == [1, 2, 3, 4]
    assert run.trainer.step == 4
    assert int(run.trainer.optimizer.iterations.numpy()) == 4
    # The failed step changed no weight: exactly the state after step 4 ...
    assert_same_arrays(run.trainer.model.get_weights(), run.saved[4]["weights"])
    assert_same_arrays(
        [np.array(v.numpy()) for v in run.trainer.optimizer.variables], run.saved[4]["optimizer"]
    )
    # ... which is what an uninterrupted run had after step 4.
    for got, want in zip(
        run.trainer.model.get_weights(), reference.saved[4]["weights"], strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_oom_batch_size_rule_fails_the_first_step_without_changing_weights(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=4"]
    run = start(new_run_dir(tmp_path), overrides, faults="oom:batch_size>16")
    initial = [w.copy() for w in run.trainer.model.get_weights()]
    finish(run)
    assert isinstance(run.error, OutOfMemory)
    assert (run.error.step, run.error.batch_size) == (1, BATCH)
    assert run.steps() == []
    assert_same_arrays(run.trainer.model.get_weights(), initial)
    assert int(run.trainer.optimizer.iterations.numpy()) == 0


def test_oom_batch_size_rule_spares_batches_at_the_limit(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=16"]
    run = train(new_run_dir(tmp_path), overrides, faults="oom:batch_size>16")
    assert run.error is None and run.result == "completed"
    assert run.steps() == [1, 2]


def test_tensorflow_resource_exhausted_in_a_call_becomes_out_of_memory(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=12", "train.checkpoint_every=100"]
    run = start(new_run_dir(tmp_path), overrides)
    compiled = run.trainer._train_calls
    calls = 0
    weights_before: list = []

    def exhausted_on_the_third_call(iterator, steps, nan_step):
        nonlocal calls
        calls += 1
        if calls == 3:
            weights_before.extend(w.copy() for w in run.trainer.model.get_weights())
            raise tf.errors.ResourceExhaustedError(
                None,
                None,
                "OOM when allocating tensor with shape[32,6,28,28]\n\tsecond line of detail",
            )
        return compiled(iterator, steps, nan_step)

    run.trainer._train_calls = exhausted_on_the_third_call
    finish(run)
    assert isinstance(run.error, OutOfMemory)
    done = run.steps()[-1]
    assert_consecutive(run.steps())
    assert run.error.step == done + 1
    assert run.error.batch_size == BATCH
    assert run.error.message == "OOM when allocating tensor with shape[32,6,28,28]"
    assert run.trainer.step == done == int(run.trainer.step_var.numpy())
    assert_same_arrays(run.trainer.model.get_weights(), weights_before)


# ----- what a config can ask for ---------------------------------------------------------


# ----- run health: a stalled input pipeline --------------------------------------------


def test_stall_fault_holds_step_n_back_then_the_run_goes_on(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=8"]
    run = train(new_run_dir(tmp_path), overrides, faults="stall:step=5,stall:seconds=3")
    assert run.result == "completed"
    assert_consecutive(run.steps())
    assert run.steps()[-1] == 8
    # Steps 1-4 are reported before the stall (a call ends at step 4), and step 5
    # only once its batch came, 3 s later (event times are rounded to milliseconds).
    ends = list(itertools.accumulate(run.calls))
    assert 4 in ends and 5 in ends, run.calls
    times = {e["step"]: e["time"] for e in run.of("step")}
    assert times[5] - times[4] >= 3.0 - 0.002


def test_gradient_accumulation_halves_the_steps_and_matches_the_big_batch(tmp_path):
    whole = start(new_run_dir(tmp_path, "whole"), [*SMALL, "train.epochs=1"])
    halved = start(
        new_run_dir(tmp_path, "halved"), [*SMALL, "train.epochs=1", "train.accumulation_steps=2"]
    )
    assert halved.trainer.steps_per_epoch == whole.trainer.steps_per_epoch // 2

    # Two micro-batches of 16 per update: the same updates as batches of 32.
    big = train(new_run_dir(tmp_path, "big"), [*SMALL, "train.epochs=1", "train.steps_per_epoch=3"])
    accumulated = train(
        new_run_dir(tmp_path, "accumulated"),
        [
            *SMALL,
            "train.epochs=1",
            "train.steps_per_epoch=3",
            "train.batch_size=16",
            "train.accumulation_steps=2",
        ],
    )
    assert accumulated.result == "completed"
    assert accumulated.steps() == [1, 2, 3]
    assert int(accumulated.trainer.optimizer.iterations.numpy()) == 3
    np.testing.assert_allclose(
        list(accumulated.losses().values()), list(big.losses().values()), rtol=1e-4, atol=1e-5
    )
    for got, want in zip(
        accumulated.trainer.model.get_weights(), big.trainer.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_mixed_precision_trains_in_bfloat16_on_a_cpu(tmp_path):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=4", "train.mixed_precision=true"]
    run = train(new_run_dir(tmp_path), overrides)
    assert run.result == "completed"
    assert run.events[0]["precision"] == "mixed_bfloat16"
    conv = run.trainer.model.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16"
    assert conv.kernel.dtype == "float32"  # the weights stay float32
    losses = list(run.losses().values())
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(run.of("epoch_end")[0]["val_loss"])


def test_jit_compile_trains_like_the_plain_step(tmp_path, reference):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=4", "train.jit_compile=true"]
    run = train(new_run_dir(tmp_path), overrides)
    assert run.result == "completed"
    assert run.trainer.jit_compile is True and run.events[0]["jit_compile"] is True
    got = run.losses()
    expected = reference.losses()
    np.testing.assert_allclose(
        [got[s] for s in range(1, 5)], [expected[s] for s in range(1, 5)], rtol=1e-3
    )


def test_jit_compile_auto_leaves_a_short_run_on_a_cpu_without_xla(reference):
    assert reference.trainer.config.train.jit_compile == "auto"
    assert reference.trainer.jit_compile is False
    assert reference.events[0]["jit_compile"] is False


@pytest.mark.parametrize(
    "setting, on_gpu, expected",
    [
        ("auto", True, True),  # on a GPU XLA pays
        ("auto", False, False),  # on a CPU its steps are slower
        (True, False, True),  # forced
        (False, True, False),
    ],
)
def test_use_xla(setting, on_gpu, expected):
    assert use_xla(setting, on_gpu) is expected


@pytest.mark.parametrize(
    "name, cls", [("sgd", keras.optimizers.SGD), ("adamw", keras.optimizers.AdamW)]
)
def test_other_optimizers_train(tmp_path, name, cls):
    overrides = [*SMALL, "train.epochs=1", "train.steps_per_epoch=4", f'train.optimizer="{name}"']
    run = start(new_run_dir(tmp_path), overrides)
    initial = run.trainer.model.get_weights()
    finish(run)
    assert run.result == "completed"
    assert isinstance(run.trainer.optimizer, cls)
    assert int(run.trainer.optimizer.iterations.numpy()) == 4
    assert all(math.isfinite(v) for v in run.losses().values())
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(run.trainer.model.get_weights(), initial, strict=True)
    )


def test_cosine_schedule_reports_the_rate_each_step_used(tmp_path):
    overrides = [*SMALL, "train.epochs=2", "train.steps_per_epoch=5", 'train.schedule="cosine"']
    run = train(new_run_dir(tmp_path), overrides)
    assert run.result == "completed"
    rates = [e["learning_rate"] for e in run.of("step")]
    total = 10
    # Update s (1-based) runs at optimizer.iterations == s - 1.
    expected = [
        LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * (s - 1) / total)) for s in range(1, total + 1)
    ]
    assert rates[0] == pytest.approx(LEARNING_RATE, rel=1e-5)
    assert all(a > b for a, b in pairwise(rates)), rates
    assert 0 < rates[-1] < 0.05 * LEARNING_RATE
    assert rates == pytest.approx(expected, rel=1e-4)


def test_step_schedule_drops_by_gamma_at_the_epoch_boundary(tmp_path):
    overrides = [
        *SMALL,
        "train.epochs=2",
        "train.steps_per_epoch=4",
        'train.schedule="step"',
        "train.step_epochs=1",
        "train.step_gamma=0.5",
    ]
    next_update_rate: dict[int, float] = {}

    def at_epoch_end(run: Run, event: dict) -> None:
        if event["type"] == "epoch_end":  # the rate the epoch's first update will apply
            next_update_rate[event["epoch"]] = float(run.trainer.optimizer.learning_rate)

    run = train(new_run_dir(tmp_path), overrides, hook=at_epoch_end)
    assert run.result == "completed"
    rates = {e["step"]: e["learning_rate"] for e in run.of("step")}
    assert [rates[s] for s in range(1, 5)] == pytest.approx([LEARNING_RATE] * 4, rel=1e-6)
    assert [rates[s] for s in range(5, 9)] == pytest.approx([LEARNING_RATE * 0.5] * 4, rel=1e-6)
    # Not only reported: update 5, epoch 2's first, really applies the dropped rate.
    assert next_update_rate[1] == pytest.approx(LEARNING_RATE * 0.5, rel=1e-6)


# ----- the worker process ------------------------------------------------------------------


@pytest.mark.slow
def test_worker_process_trains_and_reports_bad_config_as_a_user_error(convdeck_home, monkeypatch):
    monkeypatch.delenv("CONVDECK_FAULTS", raising=False)
    good = create_run_dir(
        config(*SMALL, "train.epochs=1", "train.steps_per_epoch=3", home=convdeck_home),
        convdeck_home,
    )
    bad = create_run_dir(config(*SMALL, home=convdeck_home), convdeck_home)
    (bad / "config.toml").write_text('name = "lenet5-digits"\n[model]\n[data]\n[train]\nbatch_size = 0\n')
    env = {**os.environ, "CONVDECK_HOME": str(convdeck_home)}
    # Both at once: most of each is importing TensorFlow.
    workers = {
        run_dir: subprocess.Popen(
            [sys.executable, "-m", "engine.train.worker", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for run_dir in (good, bad)
    }
    output = {run_dir: process.communicate(timeout=240)[0] for run_dir, process in workers.items()}

    assert workers[good].returncode == 0, output[good][-3000:]
    events = read_events(good / "events.jsonl")
    assert [e.type for e in events[:2]] == ["building", "run_started"]
    assert [e.step for e in events if e.type == "step"] == [1, 2, 3]
    assert events[-1].type == "finished" and events[-1].reason == "completed"
    assert (good / "model.keras").exists()
    assert tf.train.latest_checkpoint(str(good / "checkpoints")) is not None
    assert not (good / "control.sock").exists()  # closed on the way out

    assert workers[bad].returncode == 2, output[bad][-3000:]
    failed = read_events(bad / "events.jsonl")[-1]
    assert failed.type == "failed"
    assert failed.user_error is True
    assert "batch_size" in failed.error
    assert "Traceback" not in failed.error
