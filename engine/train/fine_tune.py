"""Transfer learning's stages: the head alone on a frozen base, then the top of the base too.

Which stage a run is in follows from its epoch alone (``train.fine_tune_at_epoch``),
so a run resumed after the stage began picks it up again: the top of the base
unfrozen and the rate scaled, the same as the run it continues. The rate's factor
is a variable the schedule multiplies by (``ScaledRate``), so the optimizer and its
checkpointed state stay the same object through the change.

The base's BatchNorm layers stay frozen in every stage (engine.models.transfer).

The optimizer is built over every variable the run may ever train
(:meth:`FineTuning.tunable_variables`), frozen ones included: its slots then
exist from the first checkpoint on, and a checkpoint restores into it whatever
the stage, with no new optimizer to make halfway (as Keras' ``compile`` would).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from engine.config import ConfigError, RunConfig
from engine.models.registry import input_preprocessing
from engine.models.transfer import base_of, keep_batch_norm_frozen

HEAD = "head"
FINE_TUNE = "fine-tune"


class FineTuning:
    """The stages of one run's model; a no-op for a model without a nested base."""

    def __init__(self, config: RunConfig, model: keras.Model) -> None:
        self.model = model
        self.base = base_of(model)
        self.freeze_base = config.model.freeze_base
        self.at_epoch = config.train.fine_tune_at_epoch
        self.lr_factor = config.train.fine_tune_lr_factor
        self.rate_factor = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="fine_tune_rate_factor")
        self.first_unfrozen = (
            first_unfrozen_layer(self.base, config.model.fine_tune_from)
            if self.base is not None and self.at_epoch is not None
            else 0
        )
        self.stage: str | None = None

    def stage_at(self, epoch: int) -> str | None:
        """``head`` (base frozen), ``fine-tune`` (top of the base unfrozen), or None (no stages)."""
        if self.base is None or not self.freeze_base:
            return None
        return FINE_TUNE if self.at_epoch is not None and epoch >= self.at_epoch else HEAD

    def tunable_variables(self) -> list:
        """Every variable some stage trains, in the model's order: what the optimizer is built over."""
        if self.base is None:
            return list(self.model.trainable_variables)
        flags = [(layer, layer.trainable) for layer in (self.base, *self.base.layers)]
        self.base.trainable = True
        keep_batch_norm_frozen(self.base)
        variables = list(self.model.trainable_variables)
        for layer, trainable in flags:  # the base first: setting it sets its layers too
            layer.trainable = trainable
        return variables

    def enter(self, epoch: int) -> str | None:
        """Put the model in ``epoch``'s stage; a line for the run's log when the stage changed."""
        stage = self.stage_at(epoch)
        if stage == self.stage:
            return None
        self.stage = stage
        if stage == HEAD:
            self.base.trainable = False
            self.rate_factor.assign(1.0)
            return f"transfer: base frozen, training the head only ({self._trainable_params():,} parameters)"
        self.base.trainable = True
        for layer in self.base.layers[: self.first_unfrozen]:
            layer.trainable = False
        keep_batch_norm_frozen(self.base)
        self.rate_factor.assign(self.lr_factor)
        layers = self.base.layers
        return (
            f"transfer: fine-tuning from epoch {epoch + 1}: the top {len(layers) - self.first_unfrozen} "
            f"of the base's {len(layers)} layers (from {layers[self.first_unfrozen].name}) train, "
            f"BatchNorm frozen in inference mode, learning rate x{self.lr_factor:g} "
            f"({self._trainable_params():,} parameters)"
        )

    def _trainable_params(self) -> int:
        return sum(math.prod(v.shape) for v in self.model.trainable_variables)


def preprocessing_note(config: RunConfig) -> str | None:
    """A line for the run's log when the images go through a family's ``preprocess_input``."""
    keras_base = input_preprocessing(config.model)
    if keras_base is None:
        return None
    return (
        f"transfer: images go through keras.applications.{keras_base.module}.preprocess_input "
        f"({keras_base.preprocessing}) for the pretrained weights, not per-channel standardisation"
    )


def first_unfrozen_layer(base: keras.Model, fine_tune_from: float | str) -> int:
    """The index of the base's lowest layer that the fine-tune stage trains.

    Args:
        base: The keras.applications base.
        fine_tune_from: A layer's name, or the top fraction of the layers (0.3: the top 30%).

    Raises:
        ConfigError: no layer of the base has that name (a few valid ones are named).
    """
    layers = base.layers
    if isinstance(fine_tune_from, str):
        names = [layer.name for layer in layers]
        if fine_tune_from in names:
            return names.index(fine_tune_from)
        weighted = [layer.name for layer in layers if layer.weights]
        examples = ", ".join(weighted[-len(weighted) // 3 :: max(1, len(weighted) // 18)][:6])
        raise ConfigError(
            f"model.fine_tune_from: the base has no layer {fine_tune_from!r}; expected a fraction "
            f"in (0, 1] or one of its {len(layers)} layers' names, e.g. {examples}"
        )
    return len(layers) - max(1, math.ceil(fine_tune_from * len(layers)))
