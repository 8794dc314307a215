"""Mixed precision: the dtype policy and loss scaling.

float16 needs loss scaling to keep small gradients from flushing to zero;
bfloat16 has float32's exponent range and does not. A GPU gets
``mixed_float16`` (tensor cores), a CPU ``mixed_bfloat16`` (no float16 maths).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def apply_policy(mixed_precision: bool) -> str:
    """Set the global Keras dtype policy before any model is built; returns its name."""
    if not mixed_precision:
        name = "float32"
    elif tf.config.list_physical_devices("GPU"):
        name = "mixed_float16"
    else:
        name = "mixed_bfloat16"
    keras.mixed_precision.set_dtype_policy(name)
    return name


def needs_loss_scaling() -> bool:
    return keras.mixed_precision.dtype_policy().name == "mixed_float16"


def wrap_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Add dynamic loss scaling where the policy needs it."""
    if needs_loss_scaling():
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def scale_loss(optimizer: keras.optimizers.Optimizer, loss):
    """The loss to differentiate: scaled under a loss-scale optimizer, else as is.

    The loss-scale optimizer unscales the gradients itself when applying them
    and skips an update whose gradients overflowed.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(loss)
    return loss
