"""Transfer learning: pretrained weights, their preprocessing, a frozen base, the fine-tune stage.

No download: the "pretrained" weights are a file saved from a freshly built
MobileNetV2 base at 32x32 (its smallest size), and the runs train a few steps
on synthetic images.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from engine.config import ConfigError, validate_config
from engine.models import build_model
from engine.models.transfer import base_of
from engine.presets import load_preset
from engine.run.events import EventWriter
from engine.train.fine_tune import FINE_TUNE, first_unfrozen_layer
from engine.train.trainer import Trainer

SHAPE = (32, 32, 3)
LEARNING_RATE = 1e-3
FACTOR = 0.1


class Crash(Exception):
    """Stands in for the worker dying mid-run."""


class Recorder(EventWriter):
    """Keeps the events in memory and calls ``hook`` after each."""

    def __init__(self, path: Path, hook=None) -> None:
        super().__init__(path, flush_interval=0.0)
        self.hook, self.events = hook, []

    def emit(self, type: str, **fields) -> dict:
        event = super().emit(type, **fields)
        self.events.append(event)
        if self.hook:
            self.hook(event)
        return event


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[str, keras.Model]:
    """A MobileNetV2 base's weights, saved as a run would find ImageNet's."""
    keras.utils.set_random_seed(7)
    base = keras.applications.MobileNetV2(input_shape=SHAPE, include_top=False, pooling="avg", weights=None)
    path = str(tmp_path_factory.mktemp("weights") / "base.weights.h5")
    base.save_weights(path)
    return path, base


def transfer_config(weights: str, *extra: str, epochs: int = 2):
    data = {
        "name": "transfer-test",
        "model": {"arch": "mobilenetv2", "weights": weights, "include_top": False, "freeze_base": True},
        "data": {"dataset": "synthetic", "image_size": list(SHAPE[:2]), "channels": 3,
                 "num_classes": 4, "synthetic_examples": 64, "validation_split": 0.25},
        "train": {"batch_size": 8, "epochs": epochs, "steps_per_epoch": 2, "learning_rate": LEARNING_RATE,
                  "fine_tune_at_epoch": 1, "fine_tune_lr_factor": FACTOR, "checkpoint_every": 100},
    }
    for item in extra:
        key, value = item.split("=")
        section, field = key.split(".")
        data[section][field] = float(value) if value[0].isdigit() else value
    return validate_config(data)


def start(run_dir: Path, config, hook=None, resume: bool = False) -> tuple[Trainer, Recorder]:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    writer = Recorder(run_dir / "events.jsonl", hook)
    trainer = Trainer(config, run_dir, writer)
    trainer.setup(resume=resume)
    return trainer, writer


def moving_means(base: keras.Model) -> list[np.ndarray]:
    return [layer.moving_mean.numpy().copy() for layer in base.layers if hasattr(layer, "moving_mean")]


# ----- the model --------------------------------------------------------------


def test_weights_file_is_loaded_into_the_base(weights_file):
    path, source = weights_file
    model = build_model(transfer_config(path).model, SHAPE, 4)
    kernel = base_of(model).get_layer("block_16_project").kernel.numpy()
    np.testing.assert_array_equal(kernel, source.get_layer("block_16_project").kernel.numpy())


def test_images_go_through_the_familys_preprocess_input(weights_file):
    model = build_model(transfer_config(weights_file[0]).model, SHAPE, 4)
    images = np.random.default_rng(0).random((4, *SHAPE), dtype=np.float32)  # [0, 1], as datasets give
    seen_by_base = keras.Model(model.input, model.get_layer("preprocess").output)(images)
    expected = keras.applications.mobilenet_v2.preprocess_input(images * 255.0)
    np.testing.assert_allclose(np.asarray(seen_by_base), expected, atol=1e-6)
    assert float(np.min(expected)) >= -1 and float(np.max(expected)) <= 1


def test_fine_tune_from_a_fraction_or_a_name(weights_file):
    base = base_of(build_model(transfer_config(weights_file[0]).model, SHAPE, 4))
    layers = len(base.layers)
    assert first_unfrozen_layer(base, 1.0) == 0
    assert first_unfrozen_layer(base, 0.3) == layers - int(np.ceil(0.3 * layers))
    assert base.layers[first_unfrozen_layer(base, "block_11_expand")].name == "block_11_expand"
    with pytest.raises(ConfigError) as error:
        first_unfrozen_layer(base, "block_99_expand")
    message = str(error.value)
    assert "\n" not in message and "'block_99_expand'" in message and "block_1" in message


# ----- config errors: one line each -------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"model": {"arch": "resnet", "weights": "imagenet"}}, "model.weights: model.arch 'resnet'"),
        ({"model": {"arch": "vgg", "freeze_base": True}}, "model.freeze_base: model.arch 'vgg'"),
        ({"model": {"fine_tune_from": 0}}, "model.fine_tune_from: got 0.0; expected a fraction"),
        ({"model": {"fine_tune_from": 1.5}}, "in (0, 1]"),
        ({"model": {"arch": "mobilenetv2", "freeze_base": True}, "train": {"epochs": 3, "fine_tune_at_epoch": 3}},
         "train.fine_tune_at_epoch: got 3; the run has 3 epochs"),
        ({"model": {"arch": "mobilenetv2", "weights": "imagenet"}, "train": {"epochs": 3, "fine_tune_at_epoch": 1}},
         "model.freeze_base is false"),
        ({"train": {"fine_tune_lr_factor": 0}}, "train.fine_tune_lr_factor"),
    ],
)
def test_transfer_settings_are_checked_in_one_line(override, expected):
    with pytest.raises(ConfigError) as error:
        validate_config(override)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_preset_is_the_tutorials_recipe():
    config = load_preset("mobilenetv2-flowers-transfer")
    assert (config.model.arch, config.model.weights, config.model.include_top) == ("mobilenetv2", "imagenet", False)
    assert config.model.freeze_base and config.model.fine_tune_from == "block_11_expand_relu"
    assert config.data.image_size == (160, 160) and config.train.learning_rate == 1e-4
    assert config.train.fine_tune_lr_factor == 0.1 and config.train.fine_tune_at_epoch < config.train.epochs
    base = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights=None)
    assert [layer.name for layer in base.layers].index("block_11_expand_relu") == 100  # fine_tune_at


# ----- the stages, trained ----------------------------------------------------


def test_head_then_fine_tune_with_bn_in_inference_mode(tmp_path, weights_file):
    states: dict[int, dict] = {}

    def at_epoch_end(event):
        if event["type"] == "epoch_end":
            states[event["epoch"]] = {
                "weights": [w.numpy().copy() for w in base.weights if w.trainable or "moving" not in w.path],
                "means": moving_means(base),
            }

    trainer, writer = start(tmp_path / "run", transfer_config(weights_file[0], "model.fine_tune_from=0.3"),
                            at_epoch_end)
    base = base_of(trainer.model)
    before = {"weights": [w.numpy().copy() for w in base.weights if w.trainable or "moving" not in w.path],
              "means": moving_means(base)}
    head_before = trainer.model.get_layer("logits").kernel.numpy().copy()
    assert trainer.data.mean == [0.0, 0.0, 0.0] and trainer.data.std == [1.0, 1.0, 1.0]  # not standardised
    assert trainer.run() == "completed"
    epoch_ends = sorted(states)
    head_only, tuned = states[epoch_ends[0]], states[epoch_ends[1]]

    # Epoch 1: the base is untouched, the head learnt.
    for old, new in zip(before["weights"], head_only["weights"], strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(head_before, trainer.model.get_layer("logits").kernel.numpy())
    # Epoch 2: the top 30% changed, the rest did not; BatchNorm's statistics never moved.
    first = first_unfrozen_layer(base, 0.3)
    top = {id(w) for layer in base.layers[first:] for w in layer.trainable_weights}
    changed = [not np.array_equal(a, b) for a, b in zip(head_only["weights"], tuned["weights"], strict=True)]
    listed = [w for w in base.weights if w.trainable or "moving" not in w.path]
    assert any(c for w, c in zip(listed, changed, strict=True) if id(w) in top)
    assert not any(c for w, c in zip(listed, changed, strict=True) if id(w) not in top)
    for old, new in zip(before["means"], tuned["means"], strict=True):
        np.testing.assert_array_equal(old, new)

    rates = {e["epoch"]: e["learning_rate"] for e in writer.events if e["type"] == "step"}
    assert rates == {1: pytest.approx(LEARNING_RATE), 2: pytest.approx(LEARNING_RATE * FACTOR)}  # 1-based
    logs = [e["message"] for e in writer.events if e["type"] == "log" and e["message"].startswith("transfer:")]
    assert len(logs) == 3 and "mobilenet_v2.preprocess_input (pixels scaled to [-1, 1]" in logs[0]
    assert "head only" in logs[1] and "fine-tuning from epoch 2" in logs[2]


def test_resume_after_the_stage_keeps_it(tmp_path, weights_file):
    config = transfer_config(weights_file[0], "model.fine_tune_from=0.3", epochs=3)

    def crash_in_epoch_three(event):
        if event["type"] == "step" and event["epoch"] == 3:  # events count epochs from 1
            raise Crash

    run_dir = tmp_path / "run"
    trainer, _ = start(run_dir, config, crash_in_epoch_three)
    with pytest.raises(Crash):
        trainer.run()
    trainer.events.close()

    resumed, writer = start(run_dir, config, resume=True)
    assert resumed.epoch == 2  # the trainer counts from 0: the third epoch, after the stage began
    base = base_of(resumed.model)
    means = moving_means(base)
    assert resumed.run() == "completed"
    assert resumed.fine_tuning.stage == FINE_TUNE
    first = first_unfrozen_layer(base, 0.3)
    batch_norm = keras.layers.BatchNormalization
    assert all(layer.trainable != isinstance(layer, batch_norm) for layer in base.layers[first:])
    assert not any(layer.trainable for layer in base.layers[:first])
    rates = [e["learning_rate"] for e in writer.events if e["type"] == "step"]
    assert rates and rates == pytest.approx([LEARNING_RATE * FACTOR] * len(rates))
    for old, new in zip(means, moving_means(base), strict=True):
        np.testing.assert_array_equal(old, new)


def test_the_resnet18_remedy_leaves_the_transfer_settings_behind():
    from engine.remedies import apply_remedy

    config, changes = apply_remedy("resnet18", load_preset("mobilenetv2-flowers-transfer"))
    assert (config.model.weights, config.model.freeze_base, config.train.fine_tune_at_epoch) == (None, False, None)
    assert changes["model.weights"] == ["imagenet", None]
    _, plain = apply_remedy("resnet18", load_preset("mobilenetv2-flowers"))
    assert "model.weights" not in plain and "train.fine_tune_at_epoch" not in plain


def test_a_saved_transfer_model_loads_back(tmp_path, weights_file):
    model = build_model(transfer_config(weights_file[0]).model, SHAPE, 4)
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-5)
