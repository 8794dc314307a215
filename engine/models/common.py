"""Layer recipes the families share: the image input, conv-BN-ReLU units, the logits head."""

from __future__ import annotations

import keras
from keras import layers

# BatchNorm as keras.applications' ResNet and DenseNet; momentum 0.9 (not
# Keras' 0.99) so the moving statistics catch up within a short run.
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.9


def image_input(input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    """The model's input: already normalised images ``(height, width, channels)``."""
    return keras.Input(shape=input_shape, name="image")


def batch_norm(x: keras.KerasTensor, name: str | None = None) -> keras.KerasTensor:
    """BatchNormalization with the zoo's epsilon and momentum."""
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def bn_relu(x: keras.KerasTensor, name: str | None = None) -> keras.KerasTensor:
    """BatchNorm then ReLU: DenseNet's pre-activation order."""
    x = batch_norm(x, name=f"{name}_bn" if name else None)
    return layers.ReLU(name=f"{name}_relu" if name else None)(x)


def conv_bn(
    x: keras.KerasTensor, filters: int, kernel_size: int, strides: int = 1, name: str | None = None
) -> keras.KerasTensor:
    """A "same"-padded convolution then BatchNorm; no bias, since BN's beta replaces it."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv" if name else None,
    )(x)
    return batch_norm(x, name=f"{name}_bn" if name else None)


def conv_bn_relu(
    x: keras.KerasTensor, filters: int, kernel_size: int, strides: int = 1, name: str | None = None
) -> keras.KerasTensor:
    """A "same"-padded convolution, BatchNorm and ReLU."""
    x = conv_bn(x, filters, kernel_size, strides, name=name)
    return layers.ReLU(name=f"{name}_relu" if name else None)(x)


def logits_head(
    x: keras.KerasTensor, num_classes: int, dropout: float, name: str = "logits"
) -> keras.KerasTensor:
    """Optional dropout, then the Dense layer that emits the logits.

    The Dense layer computes in float32 whatever the global policy: under mixed
    precision float16 logits would overflow the softmax in the loss.
    """
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name=name)(x)


def pooled_logits(
    x: keras.KerasTensor, num_classes: int, dropout: float, name: str = "logits"
) -> keras.KerasTensor:
    """Global average pooling, then ``logits_head``: the head of the modern families."""
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return logits_head(x, num_classes, dropout, name=name)


def fully_connected_stack(x: keras.KerasTensor, units: int, name: str) -> keras.KerasTensor:
    """AlexNet's and VGG's two hidden fc layers, each behind dropout 0.5 (torchvision's order)."""
    x = layers.Flatten(name=f"{name}_flatten")(x)
    for index in (1, 2):
        x = layers.Dropout(0.5, name=f"{name}_dropout{index}")(x)
        x = layers.Dense(units, activation="relu", name=f"{name}_fc{index}")(x)
    return x


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit`` characters, for a ConfigError."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
