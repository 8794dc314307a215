"""``convdeck eval``, the TensorFlow half: run a run's weights over a split and report.

The weights are the run's own: ``last`` restores the newest rolling
checkpoint (or ``model.keras`` when the run kept no checkpoint), ``best``
the one kept under ``checkpoints/best/``. The figures themselves come from
:mod:`engine.evaluation` (scikit-learn's metrics); the most confident
mistakes are also written as PNG files, so the TUI can show them.

Two entries share the work: :func:`evaluate_run` loads weights from disk (a
process of its own, ``python -m engine.train.evaluate``), :func:`evaluate_model`
takes a live model (the worker's, at a run's end or on ``ctl RUN eval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from engine.config import RunConfig
from engine.errors import ConfigError
from engine.evaluation import MISTAKES_DIR, EvalReport, evaluate_outputs, mistake_image_path, write_report
from engine.run.checkpoint_files import BEST_DIR
from engine.run.events import EventWriter
from engine.train.data import (
    apply_cache_setting,
    normalization_stats,
    normalized,
    open_raw,
    standardizes,
    validation_batches,
)
from engine.train.strategy import configure_devices

SPLITS = ("validation", "train")
WEIGHTS = ("last", "best")
WORST_CLASSES_IN_EVENT = 3
"""How many of the worst classes (by F1) the ``eval`` event names; eval.json has them all."""


@dataclass
class SplitData:
    """One split's images to evaluate on: normalised as the run trained, in a fixed order."""

    batches: tf.data.Dataset
    class_names: list[str] | None
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: list[float]
    std: list[float]


def evaluate_run(run_dir: Path, config: RunConfig, weights: str = "last", split: str = "validation") -> EvalReport:
    """Evaluate the run's ``weights`` on ``split``; writes the mistakes' PNGs under ``mistakes/``.

    Raises:
        ConfigError: no such split or weights, or the run has none to evaluate.
    """
    _check_split(split)
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: expected one of {', '.join(WEIGHTS)}")
    # Memory growth: beside a live run on the same GPU, take only what evaluating needs.
    configure_devices(config.train)
    data = open_split(config, split)
    model = load_weights(run_dir, config, data.input_shape, data.num_classes, weights)
    return _evaluate(model, run_dir, data, split, weights)


def evaluate_model(
    model: tf.keras.Model,
    run_dir: Path,
    config: RunConfig,
    split: str = "validation",
    *,
    weights: str = "last",
    normalization: tuple[list[float], list[float]] | None = None,
) -> EvalReport:
    """Evaluate a live model (the trainer's) on ``split``; writes the mistakes' PNGs like :func:`evaluate_run`.

    Args:
        model: the model as it is now.
        run_dir: the run directory (``mistakes/`` goes there).
        config: the run's config (its data section says what to open).
        split: ``validation`` or ``train``.
        weights: what the report says the weights are.
        normalization: the training set's per-channel mean and std the model
            trained with; by default measured again, as :func:`evaluate_run` does.

    Raises:
        ConfigError: no such split, or the data has none.
    """
    _check_split(split)
    return _evaluate(model, run_dir, open_split(config, split, normalization), split, weights)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")


def open_split(
    config: RunConfig, split: str, normalization: tuple[list[float], list[float]] | None = None
) -> SplitData:
    """The run's ``split``, batched in order and normalised with the training statistics.

    Raises:
        ConfigError: the data cannot be opened, or has no such split.
    """
    raw = open_raw(config.data)
    if normalization is None:
        # The statistics as training measured them: over the cached split when it caches.
        raw = apply_cache_setting(raw, config.data)
        normalization = normalization_stats(raw, config.data, standardizes(config))
    mean, std = normalization
    source = raw.val if split == "validation" else raw.train
    if source is None:
        raise ConfigError(f"{raw.name} has no {split} split (set data.validation_split to hold one out)")
    batches = validation_batches(normalized(source, mean, std), config.train.batch_size)
    return SplitData(batches, raw_class_names(raw), raw.input_shape, raw.num_classes, list(mean), list(std))


def _evaluate(model: tf.keras.Model, run_dir: Path, data: SplitData, split: str, weights: str) -> EvalReport:
    labels, logits, images = _predict(model, data.batches)
    report = evaluate_outputs(labels, logits, data.class_names, split=split, weights=weights)
    save_mistake_images(run_dir, report, images, data.mean, data.std)
    return report


def eval_event_fields(report: EvalReport) -> dict:
    """The ``eval`` event's summary of a report: its figures and the worst classes' names."""
    return {
        "split": report.split,
        "weights": report.weights,
        "examples": report.examples,
        "loss": _rounded(report.loss),
        "accuracy": _rounded(report.accuracy),
        "top5_accuracy": _rounded(report.top5_accuracy),
        "worst_classes": [c.name for c in report.worst_classes()[:WORST_CLASSES_IN_EVENT]],
    }


def record_evaluation(report: EvalReport, run_dir: Path, events: EventWriter, **context) -> dict:
    """Write ``eval.json`` and emit the ``eval`` event (``context``: step, trigger); returns the event."""
    path = write_report(run_dir, report)
    return events.emit("eval", **eval_event_fields(report), path=str(path), **context)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def load_weights(run_dir: Path, config: RunConfig, input_shape, num_classes: int, weights: str) -> tf.keras.Model:
    """The run's model with its ``last`` or ``best`` weights."""
    from engine.models import build_model

    directory = run_dir / "checkpoints"
    if weights == "best":
        directory = directory / BEST_DIR
    latest = tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None
    if latest is None and weights == "last" and (run_dir / "model.keras").exists():
        import engine.models.transfer  # noqa: F401 - registers the preprocessing layer it may hold

        return tf.keras.models.load_model(run_dir / "model.keras", compile=False)
    if latest is None:
        what = "no best checkpoint yet (set train.best_metric)" if weights == "best" else "no checkpoint"
        raise ConfigError(f"run {run_dir.name} has {what} to evaluate; train it first (`convdeck resume`)")
    model = build_model(config.model, input_shape, num_classes)
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return model


def _predict(model: tf.keras.Model, batches: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, float32 logits and the (normalised) images, in the split's order."""
    labels, logits, images = [], [], []
    for image_batch, label_batch in batches:
        out = model(image_batch, training=False)
        logits.append(tf.cast(out, tf.float32).numpy())
        labels.append(label_batch.numpy())
        images.append(image_batch.numpy())
    return np.concatenate(labels), np.concatenate(logits), np.concatenate(images)


def raw_class_names(raw) -> list[str] | None:
    names = getattr(raw, "class_names", None)
    return list(names) if names else None


def save_mistake_images(run_dir: Path, report: EvalReport, images: np.ndarray, mean, std) -> list[Path]:
    """The report's mistakes as PNG files (``mistakes/NN-true-T-pred-P.png``), replacing older ones."""
    folder = run_dir / MISTAKES_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    written = []
    for rank, mistake in enumerate(report.mistakes):
        pixels = images[mistake.example] * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
        # Sources give images in [0, 1] (engine.datasets.sources); undo the normalisation, then scale.
        pixels = np.clip(pixels * 255.0, 0, 255).round().astype(np.uint8)
        path = mistake_image_path(run_dir, rank, mistake)
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.train.evaluate RUN_DIR``: evaluate, write eval.json, print it."""
    import argparse
    import json
    import os
    import sys

    from engine.evaluation import write_report
    from engine.run.store import read_config

    parser = argparse.ArgumentParser(prog="python -m engine.train.evaluate")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--weights", default="last")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        report = evaluate_run(args.run_dir, read_config(args.run_dir), args.weights, args.split)
    except ConfigError as error:
        print(f"convdeck: {error}", file=sys.stderr)
        return 2
    write_report(args.run_dir, report)
    print(json.dumps(report.as_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
