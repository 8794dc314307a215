"""Optimizers and learning-rate schedules from the train section of a config."""

from __future__ import annotations

import keras
import tensorflow as tf

from engine.config import TrainConfig
from engine.train.precision import wrap_optimizer


def make_schedule(train: TrainConfig, steps_per_epoch: int, total_steps: int):
    """A float for a constant rate, else a Keras schedule over optimizer updates."""
    rate = train.learning_rate
    if train.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, total_steps))
    if train.schedule == "step":
        every = train.step_epochs * steps_per_epoch
        drops = max(0, (total_steps - 1) // every)
        # Keras evaluates a schedule at the count of updates already made, so the
        # first update of epoch k*step_epochs+1 sees the boundary minus one.
        boundaries = [every * (i + 1) - 1 for i in range(drops)]
        if not boundaries:
            return rate
        values = [rate * train.step_gamma**i for i in range(drops + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return rate


class ScaledRate(keras.optimizers.schedules.LearningRateSchedule):
    """A rate or schedule times a factor held in a variable: the fine-tune stage's lower rate.

    The factor changes when a stage begins (engine.train.fine_tune); the
    schedule underneath keeps counting as before.
    """

    def __init__(self, rate, factor: tf.Variable) -> None:
        self.rate = rate
        self.factor = factor

    def __call__(self, step):
        rate = self.rate(step) if callable(self.rate) else self.rate
        return tf.cast(rate, tf.float32) * self.factor

    def get_config(self) -> dict:
        return {"rate": self.rate, "factor": float(self.factor.numpy())}


def make_optimizer(
    train: TrainConfig, steps_per_epoch: int, total_steps: int, rate_factor: tf.Variable | None = None
):
    """The configured optimizer with its schedule, loss-scaled where precision needs it.

    ``rate_factor``: a variable the rate is multiplied by (see ``ScaledRate``).
    """
    rate = make_schedule(train, steps_per_epoch, total_steps)
    if rate_factor is not None:
        rate = ScaledRate(rate, rate_factor)
    if train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            rate, momentum=train.momentum, weight_decay=train.weight_decay or None
        )
    elif train.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(rate)
    return wrap_optimizer(optimizer)


def current_learning_rate(optimizer) -> tf.Tensor:
    """The rate the next update uses, as a float32 tensor (works inside tf.function)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return tf.cast(inner.learning_rate, tf.float32)
