"""``convdeck eval``, the TensorFlow half: run a run's weights over a split and report.

The weights are the run's own: ``last`` restores the newest rolling
checkpoint (or ``model.keras`` when the run kept no checkpoint), ``best``
the one kept under ``checkpoints/best/``. The figures themselves come from
:mod:`engine.evaluation` (scikit-learn's metrics); the most confident
mistakes are also written as PNG files, so the TUI can show them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from engine.config import RunConfig
from engine.errors import ConfigError
from engine.evaluation import MISTAKES_DIR, EvalReport, evaluate_outputs, mistake_image_path
from engine.train.data import (
    apply_cache_setting,
    normalization_stats,
    normalized,
    open_raw,
    validation_batches,
)
from engine.train.strategy import configure_devices

SPLITS = ("validation", "train")
WEIGHTS = ("last", "best")
BEST_CHECKPOINT_DIR = "best"


def evaluate_run(run_dir: Path, config: RunConfig, weights: str = "last", split: str = "validation") -> EvalReport:
    """Evaluate the run's ``weights`` on ``split``; writes the mistakes' PNGs under ``mistakes/``.

    Raises:
        ConfigError: no such split or weights, or the run has none to evaluate.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: expected one of {', '.join(WEIGHTS)}")
    # Memory growth: beside a live run on the same GPU, take only what evaluating needs.
    configure_devices(config.train)
    raw = apply_cache_setting(open_raw(config.data), config.data)
    mean, std = normalization_stats(raw, config.data)
    source = raw.val if split == "validation" else raw.train
    if source is None:
        raise ConfigError(f"{raw.name} has no {split} split (set data.val_fraction to hold one out)")
    model = load_weights(run_dir, config, raw.input_shape, raw.num_classes, weights)
    batches = validation_batches(normalized(source, mean, std), config.train.batch_size)
    labels, logits, images = _predict(model, batches)
    report = evaluate_outputs(labels, logits, raw_class_names(raw), split=split, weights=weights)
    save_mistake_images(run_dir, report, images, mean, std)
    return report


def load_weights(run_dir: Path, config: RunConfig, input_shape, num_classes: int, weights: str) -> tf.keras.Model:
    """The run's model with its ``last`` or ``best`` weights."""
    from engine.models import build_model

    directory = run_dir / "checkpoints"
    if weights == "best":
        directory = directory / BEST_CHECKPOINT_DIR
    latest = tf.train.latest_checkpoint(str(directory)) if directory.is_dir() else None
    if latest is None and weights == "last" and (run_dir / "model.keras").exists():
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
