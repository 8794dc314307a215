"""The best validation so far: its weights in ``checkpoints/best/``, and early stopping.

``train.best_metric`` names the figure (``val_accuracy``, higher is better,
or ``val_loss``, lower is better). A validation that beats the best so far
saves the model's weights through a CheckpointManager of their own
(``max_to_keep=1``), apart from the rolling checkpoints, so keeping
``keep_checkpoints`` of those never throws the best away. Every validation
that does not counts towards ``train.early_stop_patience``.

The best value, its step and the validations since are variables that the
rolling checkpoints carry too, so a resumed run (or a NaN rewind) compares
against the best of the timeline it continues, and a patience half spent
stays half spent.
"""

from __future__ import annotations

import math
from pathlib import Path

import tensorflow as tf

from engine.config import TrainConfig
from engine.run.checkpoint_files import BEST_DIR

BEST_METRICS = ("val_accuracy", "val_loss")
"""The figures a best can be kept by, in the order their index is saved."""
HIGHER_IS_BETTER = {"val_accuracy": True, "val_loss": False}


class BestKeeper:
    """Keeps the best validation's weights and counts the validations since.

    Args:
        train: the run's train section (``best_metric``, ``early_stop_patience``).
        model: the model whose weights a new best saves.
        checkpoints_dir: the folder of the rolling checkpoints; the best go in its ``best/``.
    """

    def __init__(self, train: TrainConfig, model: tf.keras.Model, checkpoints_dir: Path) -> None:
        self.metric = train.best_metric if train.best_metric in BEST_METRICS else None
        self.patience = train.early_stop_patience
        # No best yet is a step of -1, not a NaN value: a NaN in a checkpoint means NaN weights.
        self.value = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="best_value")
        self.step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        # Which figure ``value`` is of: a resume with another best_metric starts its best afresh.
        self.metric_index = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_metric")
        self.since_best = tf.Variable(0, dtype=tf.int64, trainable=False, name="validations_since_best")
        self.directory = Path(checkpoints_dir) / BEST_DIR
        self.manager = None
        if self.metric is not None:
            self.manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(model=model), str(self.directory), max_to_keep=1
            )

    @property
    def variables(self) -> dict[str, tf.Variable]:
        """What the rolling checkpoints carry of it (restored apart: older checkpoints lack them)."""
        return {
            "best_value": self.value,
            "best_step": self.step,
            "best_metric": self.metric_index,
            "validations_since_best": self.since_best,
        }

    def after_restore(self) -> None:
        """A restored best of another figure (best_metric changed) is no best of this one."""
        wanted = BEST_METRICS.index(self.metric) if self.metric else -1
        if int(self.metric_index.numpy()) != wanted:
            self.value.assign(0.0)
            self.step.assign(-1)
            self.metric_index.assign(wanted)
            self.since_best.assign(0)

    @property
    def best(self) -> float | None:
        """The best value so far, or None before the first validation."""
        return None if int(self.step.numpy()) < 0 else float(self.value.numpy())

    def improves(self, metrics: dict) -> bool:
        """Whether ``metrics`` (a validation's) beat the best so far; never for a NaN figure."""
        value = metrics.get(self.metric) if self.metric else None
        if value is None or not math.isfinite(value):
            return False
        best = self.best
        if best is None:
            return True
        return value > best if HIGHER_IS_BETTER[self.metric] else value < best

    def record(self, metrics: dict, step: int) -> str | None:
        """Count one validation; a new best saves the weights. Returns the new best's path, or None.

        Every worker of a multi-worker run calls this alike (a save is collective):
        a worker other than the chief was given a scratch folder, which its caller removes.
        """
        if self.metric is None:
            return None
        if not self.improves(metrics):
            self.since_best.assign_add(1)
            return None
        self.value.assign(float(metrics[self.metric]))
        self.step.assign(step)
        self.metric_index.assign(BEST_METRICS.index(self.metric))
        self.since_best.assign(0)
        return self.manager.save(checkpoint_number=step)

    @property
    def patience_spent(self) -> bool:
        """True once ``early_stop_patience`` validations in a row brought no new best."""
        return bool(self.patience) and int(self.since_best.numpy()) >= self.patience
