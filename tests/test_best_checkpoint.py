"""The best weights (checkpoints/best/), early stopping, and validations inside epochs.

Tiny LeNet-5 runs on the embedded digits, driven in-process. To make a
best that is not the last, a hook wrecks the weights once an epoch has
ended (scaled far past anything a few Adam steps undo), so every later
validation is worse: what checkpoints/best/ holds must then be the earlier
weights, and early stopping must count exactly the validations after them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_run

from engine.presets import load_preset
from engine.run.checkpoint_files import BEST_DIR, list_checkpoints
from engine.run.control import ControlState
from engine.run.events import EventWriter
from engine.run.facts import finished_status
from engine.run.store import summarize_run
from engine.train.evaluate import load_weights
from engine.train.trainer import Trainer

SMALL = ["data.image_size=[28, 28]", "model.dropout=0.0"]


class Recorder(EventWriter):
    """Keeps every event in memory and calls ``hook(trainer, event)`` after each."""

    def __init__(self, path: Path, hook: Callable[[Trainer, dict], None] | None = None) -> None:
        super().__init__(path, flush_interval=0.0)
        self.hook = hook
        self.events: list[dict] = []
        self.trainer: Trainer | None = None

    def emit(self, type: str, **fields) -> dict:
        event = super().emit(type, **fields)
        self.events.append(event)
        if self.hook is not None and self.trainer is not None:
            self.hook(self.trainer, event)
        return event

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def make_trainer(run_dir: Path, overrides: list[str], hook=None, resume: bool = False, **kwargs) -> tuple:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    writer = Recorder(run_dir / "events.jsonl", hook)
    control = ControlState()
    config = load_preset("lenet5-digits", [*SMALL, *overrides], home=run_dir)
    trainer = Trainer(config, run_dir, writer, control, **kwargs)
    trainer.setup(resume=resume)
    writer.trainer = trainer
    return trainer, writer, control


def train(run_dir: Path, overrides: list[str], hook=None, **kwargs) -> tuple:
    trainer, writer, control = make_trainer(run_dir, overrides, hook, **kwargs)
    try:
        result = trainer.run()
    finally:
        writer.close()
    return trainer, writer, result


def wreck_after_epoch(epoch: int) -> Callable[[Trainer, dict], None]:
    """A hook: at the first step after ``epoch`` ended, blow the weights up (deterministically)."""
    done: list[bool] = []
    weights_then: dict = {}

    def hook(trainer: Trainer, event: dict) -> None:
        if event["type"] == "best_checkpoint":
            weights_then[event["step"]] = [w.copy() for w in trainer.model.get_weights()]
        if event["type"] == "step" and event["epoch"] == epoch + 1 and not done:
            done.append(True)
            rng = np.random.default_rng(0)
            trainer.model.set_weights([w * 50.0 + rng.normal(0, 5.0, w.shape) for w in trainer.model.get_weights()])

    hook.weights_at_best = weights_then  # type: ignore[attr-defined]
    return hook


def validation_figures(writer: Recorder) -> list[dict]:
    """Every validation, in order: mid-epoch ones and epoch ends alike."""
    return [e for e in writer.events if e["type"] in ("validation", "epoch_end") and "val_accuracy" in e]


def accuracy_of(trainer: Trainer, model: keras.Model) -> float:
    """``model``'s validation accuracy, computed as the trainer validates."""
    real = trainer.model
    trainer.model = model
    try:
        return float(trainer._evaluate_dataset(trainer.data.val)[1])
    finally:
        trainer.model = real


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory) -> dict:
    """8 epochs of 5 steps, patience 2, the weights wrecked once epoch 2 has ended."""
    run_dir = tmp_path_factory.mktemp("early")
    hook = wreck_after_epoch(2)
    overrides = ["train.epochs=8", "train.steps_per_epoch=5", "train.early_stop_patience=2"]
    trainer, writer, result = train(run_dir, overrides, hook, evaluate_at_end=True)
    return {"trainer": trainer, "writer": writer, "result": result, "run_dir": run_dir, "hook": hook}


def test_the_best_checkpoint_holds_the_best_validations_weights(stopped_early):
    trainer, writer, run_dir = stopped_early["trainer"], stopped_early["writer"], stopped_early["run_dir"]
    figures = validation_figures(writer)
    accuracies = [e["val_accuracy"] for e in figures]
    best_index = int(np.argmax(accuracies))  # the first of equals: a tie is no new best
    bests = writer.of("best_checkpoint")
    last_best = bests[-1]
    assert (last_best["step"], last_best["value"]) == (figures[best_index]["step"], accuracies[best_index])
    assert last_best["metric"] == "val_accuracy" and last_best["epoch"] == figures[best_index]["epoch"]
    # A new best only when it beats the one before, each naming that one.
    assert all(b["value"] > b["previous"] for b in bests[1:]) and bests[0]["previous"] is None
    assert [b["previous"] for b in bests[1:]] == [b["value"] for b in bests[:-1]]
    # One checkpoint kept in best/, the best's, with exactly the weights the model had then.
    best_dir = run_dir / "checkpoints" / BEST_DIR
    assert tf.train.latest_checkpoint(str(best_dir)) == last_best["path"]
    assert sorted(p.name for p in best_dir.glob("*.index")) == [f"ckpt-{last_best['step']}.index"]
    config, data = trainer.config, trainer.data
    restored = load_weights(run_dir, config, data.input_shape, data.num_classes, "best")
    expected = stopped_early["hook"].weights_at_best[last_best["step"]]
    for got, want in zip(restored.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # Restored, they validate at the recorded best; the last weights do not.
    assert accuracy_of(trainer, restored) == pytest.approx(last_best["value"], abs=1e-6)
    assert accuracy_of(trainer, trainer.model) < last_best["value"] - 0.2


def test_early_stop_ends_the_run_after_patience_validations_without_a_new_best(stopped_early):
    writer, result = stopped_early["writer"], stopped_early["result"]
    assert result == "early_stop"
    figures = validation_figures(writer)
    best_step = writer.of("best_checkpoint")[-1]["step"]
    after_best = [e for e in figures if e["step"] > best_step]
    assert len(after_best) == 2  # the patience, then no more
    assert writer.of("epoch_end")[-1]["epoch"] < 8  # it did end early
    finished = writer.events[-1]
    assert finished["type"] == "finished" and finished["reason"] == "early_stop"
    assert finished["steps"] == after_best[-1]["step"]
    assert any("stopping early" in e["message"] for e in writer.of("log"))
    # It finished as asked: its status is finished, and it is evaluated like a completed run.
    assert finished_status("early_stop") == "finished"
    assert [e["trigger"] for e in writer.of("eval")] == ["end"]


def test_recovery_never_takes_the_best_for_a_rolling_checkpoint_and_clears_its_cut_saves(stopped_early):
    from engine.train.checkpoints import recover_checkpoints

    run_dir = stopped_early["run_dir"]
    last = stopped_early["writer"].events[-1]["steps"]
    best_step = stopped_early["writer"].of("best_checkpoint")[-1]["step"]
    assert best_step != last  # the best is older than the newest rolling checkpoint
    cut_short = run_dir / "checkpoints" / BEST_DIR / f"ckpt-{last + 1}_temp"
    cut_short.mkdir()
    with Recorder(run_dir / "recovery.jsonl") as events:
        used = recover_checkpoints(run_dir, events)
    assert used.step == last and used.prefix.parent == run_dir / "checkpoints"
    assert all(c.prefix.parent == run_dir / "checkpoints" for c in list_checkpoints(run_dir / "checkpoints"))
    assert not cut_short.exists()
    assert [e["message"] for e in events.of("log")] == [
        f"removed best/ckpt-{last + 1}_temp/, left by a save that was cut short"
    ]
    assert not events.of("checkpoint_fallback")
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints" / BEST_DIR)).endswith(f"ckpt-{best_step}")


def test_validations_inside_epochs_come_every_n_steps_and_leave_epoch_means_alone(tmp_path):
    overrides = ["train.epochs=2", "train.steps_per_epoch=6", "train.val_every_steps=4"]
    trainer, writer, result = train(tmp_path, overrides)
    assert result == "completed"
    validations = writer.of("validation")
    # Steps 4 and 8; step 12 is an epoch's end, which validates in its epoch_end.
    assert [(e["step"], e["epoch"]) for e in validations] == [(4, 1), (8, 2)]
    for event in validations:
        index = writer.events.index(event)
        steps_before = [e["step"] for e in writer.events[:index] if e["type"] == "step"]
        assert steps_before[-1] == event["step"]  # right after its step, before the next
        assert 0.0 <= event["val_accuracy"] <= 1.0 and np.isfinite(event["val_loss"])
    assert [e["step"] for e in writer.of("epoch_end")] == [6, 12]
    steps = writer.of("step")
    assert [e["step"] for e in steps] == list(range(1, 13))
    for end in writer.of("epoch_end"):
        mine = [e for e in steps if e["epoch"] == end["epoch"]]
        assert end["train_examples"] == 6 * trainer.config.train.batch_size
        assert end["loss"] == pytest.approx(np.mean([e["loss"] for e in mine]), abs=1e-5)
    # Every validation counts towards the best: the first is always one.
    assert writer.of("best_checkpoint")[0]["step"] == 4


def test_val_loss_keeps_the_lowest_and_none_keeps_nothing(tmp_path):
    _, writer, _ = train(tmp_path / "loss", ["train.epochs=2", "train.steps_per_epoch=3", "train.best_metric=val_loss"])
    losses = [e["val_loss"] for e in writer.of("epoch_end")]
    assert writer.of("best_checkpoint")[-1]["value"] == min(losses)
    assert writer.of("best_checkpoint")[-1]["metric"] == "val_loss"
    _, writer, _ = train(tmp_path / "none", ["train.epochs=1", "train.steps_per_epoch=2", "train.best_metric=none"])
    assert not writer.of("best_checkpoint")
    assert not (tmp_path / "none" / "checkpoints" / BEST_DIR).exists()


def test_a_resume_keeps_the_best_so_far_and_the_patience_spent(tmp_path):
    overrides = ["train.epochs=6", "train.steps_per_epoch=3", "train.early_stop_patience=3"]

    def stop_after_two_bad(trainer: Trainer, event: dict) -> None:
        if event["type"] == "epoch_end" and event["epoch"] == 3:
            trainer.control.request("stop")

    hook = wreck_after_epoch(1)

    def both(trainer: Trainer, event: dict) -> None:
        hook(trainer, event)
        stop_after_two_bad(trainer, event)

    trainer, writer, result = train(tmp_path, overrides, both)
    assert result == "stopped"
    best = writer.of("best_checkpoint")[-1]
    assert best["epoch"] == 1
    resumed, writer2, _ = make_trainer(tmp_path, overrides, resume=True)
    assert resumed.best.best == pytest.approx(best["value"])
    assert int(resumed.best.since_best.numpy()) == 2  # epochs 2 and 3
    try:
        assert resumed.run() == "early_stop"  # one more validation without a new best: the third
    finally:
        writer2.close()
    assert [e["epoch"] for e in writer2.of("epoch_end")] == [4]
    assert not writer2.of("best_checkpoint")


def test_a_checkpoint_from_before_best_weights_existed_still_resumes(tmp_path):
    trainer, writer, _ = make_trainer(tmp_path, ["train.epochs=1", "train.steps_per_epoch=2"])
    # What checkpoints held before: model, optimizer and progress, no best.
    trainer.step_var.assign(1)
    old = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer, **trainer.progress)
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), max_to_keep=3).save(checkpoint_number=1)
    writer.close()
    resumed, writer2, _ = make_trainer(tmp_path, ["train.epochs=1", "train.steps_per_epoch=2"], resume=True)
    writer2.close()
    assert resumed.restored_from == 1
    assert resumed.best.best is None and int(resumed.best.since_best.numpy()) == 0


def test_an_evaluation_that_fails_never_fails_the_run(tmp_path, monkeypatch):
    import engine.train.trainer as trainer_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trainer_module, "evaluate_model", broken)
    _, writer, result = train(tmp_path, ["train.epochs=1", "train.steps_per_epoch=2"], evaluate_at_end=True)
    assert result == "completed" and writer.events[-1]["type"] == "finished"
    assert not writer.of("eval")
    warnings = [e["message"] for e in writer.of("log") if e["level"] == "warning"]
    assert any("evaluation at step 2 failed (RuntimeError: disk on fire)" in m for m in warnings)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("completed", "finished"),
        ("early_stop", "finished"),
        ("pruned", "pruned"),
        ("stopped", "stopped"),
        ("nan", "stopped"),
    ],
)
def test_a_finished_events_reason_decides_the_status(convdeck_home, reason, status):
    run_dir = make_run(convdeck_home, f"run-{reason}", [{"type": "finished", "reason": reason}])
    assert summarize_run(run_dir).status == status
