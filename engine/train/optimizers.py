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


def make_optimizer(train: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The configured optimizer with its schedule, loss-scaled where precision needs it."""
    rate = make_schedule(train, steps_per_epoch, total_steps)
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
