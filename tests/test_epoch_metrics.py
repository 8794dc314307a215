"""Epoch metrics as Keras computes them: means over the epoch's examples.

The engine and ``model.fit`` train the same model from the same weights on
the same batches (three of 32 and a short one of 10), one epoch each, and
must report the same epoch loss and accuracy. A step's figures stay its
batch's, the short batch's divided by its own 10 examples.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import event_dicts

from engine.presets import load_preset
from engine.run.events import EventWriter
from engine.train.optimizers import make_optimizer
from engine.train.trainer import EpochMeans, Trainer

# No dropout: both sides would draw different masks.
OVERRIDES = ["data.image_size=[28, 28]", "model.dropout=0.0", "train.epochs=1", "train.batch_size=32"]
BATCH_SIZES = [32, 32, 32, 10]


def same_batches(trainer: Trainer) -> tf.data.Dataset:
    """The first examples of the trainer's own (normalised) data, in a fixed order."""
    images, labels = [], []
    for batch_images, batch_labels in trainer.data.train_for_epoch(0):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    count = sum(BATCH_SIZES)
    images, labels = np.concatenate(images)[:count], np.concatenate(labels)[:count]
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH_SIZES[0])


def fed_by_hand(trainer: Trainer, batches: tf.data.Dataset) -> None:
    """Every epoch of ``trainer`` is ``batches`` (a bundle built by hand), without validation."""
    trainer.data = dataclasses.replace(
        trainer.data, train=batches, val=None, steps_per_epoch=len(BATCH_SIZES), _epoch_batches=None
    )
    trainer.steps_per_epoch = trainer.total_steps = len(BATCH_SIZES)


def keras_fit(trainer: Trainer, weights: list, batches: tf.data.Dataset) -> dict:
    model = keras.models.clone_model(trainer.model)
    model.set_weights(weights)
    model.compile(
        optimizer=make_optimizer(trainer.config.train, len(BATCH_SIZES), len(BATCH_SIZES)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    history = model.fit(batches, epochs=1, shuffle=False, verbose=0).history
    return {"loss": history["loss"][0], "accuracy": history["sparse_categorical_accuracy"][0]}


def tensorboard_scalars(run_dir) -> dict[str, list[float]]:
    scalars: dict[str, list[float]] = {}
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for record in tf.compat.v1.train.summary_iterator(str(path)):
            for value in record.summary.value:
                scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> dict:
    """One epoch of the engine and one of model.fit on the same batches from the same weights."""
    keras.mixed_precision.set_dtype_policy("float32")
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "checkpoints").mkdir()
    writer = EventWriter(run_dir / "events.jsonl", flush_interval=0.0)
    trainer = Trainer(load_preset("lenet5-digits", OVERRIDES, home=run_dir), run_dir, writer)
    trainer.setup()
    batches = same_batches(trainer)
    fed_by_hand(trainer, batches)
    fit = keras_fit(trainer, trainer.model.get_weights(), batches)
    assert trainer.run() == "completed"
    writer.close()
    return {"fit": fit, "events": event_dicts(run_dir / "events.jsonl"), "run_dir": run_dir}


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def test_epoch_loss_and_accuracy_are_those_of_model_fit(both):
    epoch_end = of(both["events"], "epoch_end")[0]
    assert epoch_end["loss"] == pytest.approx(both["fit"]["loss"], abs=1e-4)
    assert epoch_end["accuracy"] == pytest.approx(both["fit"]["accuracy"], abs=1e-4)
    assert epoch_end["train_examples"] == sum(BATCH_SIZES)
    # Not the last batch's figures: the epoch's.
    assert epoch_end["loss"] != pytest.approx(of(both["events"], "step")[-1]["loss"], abs=1e-3)


def test_an_epoch_is_the_mean_of_its_steps_weighted_by_their_real_sizes(both):
    steps = of(both["events"], "step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    epoch_end = of(both["events"], "epoch_end")[0]
    for name in ("loss", "accuracy"):
        weighted = np.average([e[name] for e in steps], weights=BATCH_SIZES)
        assert epoch_end[name] == pytest.approx(weighted, abs=1e-5)
    # The run's final figures are the last epoch's.
    finished = of(both["events"], "finished")[-1]
    assert (finished["loss"], finished["accuracy"]) == (epoch_end["loss"], epoch_end["accuracy"])


def test_tensorboard_has_the_epoch_means(both):
    scalars = tensorboard_scalars(both["run_dir"])
    epoch_end = of(both["events"], "epoch_end")[0]
    assert scalars["train/epoch_loss"] == [pytest.approx(epoch_end["loss"], abs=1e-5)]
    assert scalars["train/epoch_accuracy"] == [pytest.approx(epoch_end["accuracy"], abs=1e-5)]


def test_epoch_means_forget_the_steps_a_rewind_undid():
    means = EpochMeans()
    assert means.means() == {}
    means.add(1, 32, 2.0, 0.5)
    means.add(2, 32, 1.0, 0.75)
    means.add(3, 10, 9.0, 0.0)
    means.drop_after(2)
    assert means.means() == {"loss": 1.5, "accuracy": 0.625, "train_examples": 64}
    means.add(3, 10, 0.5, 1.0)
    assert means.means()["loss"] == pytest.approx((64 + 32 + 5) / 74)
    assert means.means()["accuracy"] == pytest.approx((16 + 24 + 10) / 74)


def test_the_chart_shows_the_epoch_means_on_its_epoch_axis():
    from engine.run import protocol
    from engine.run.history import RunHistory
    from tui.widgets.loss_chart import LossChart

    steps = [
        {"type": "step", "time": 100.0 + s, "step": s, "epoch": 1, "loss": 2.0 - s / 10, "accuracy": s / 10}
        for s in range(1, 5)
    ]
    epoch_end = {"type": "epoch_end", "time": 105.0, "epoch": 1, "loss": 1.75, "accuracy": 0.25, "val_loss": 1.5}
    history = RunHistory()
    events = [{"type": "run_started", "time": 100.0, "steps_per_epoch": 4}, *steps, epoch_end]
    history.ingest([protocol.from_dict(event) for event in events])
    assert (history.epoch_loss.mean(), history.epoch_accuracy.mean()) == ([1.75], [0.25])
    chart = LossChart()
    chart.set_history(history)
    chart.smoothing = 0.0
    chart.x_axis = "epoch"
    drawn = chart._draw(80, 16).plain
    assert "◆ epoch mean" in drawn.splitlines()[0]
    assert "◆" in "".join(drawn.splitlines()[1:])  # the point itself
    chart.x_axis = "step"  # a point per epoch belongs to the epoch axis only
    assert "◆" not in chart._draw(80, 16).plain
