"""AlexNet (Krizhevsky et al., 2012), at ImageNet scale or CIFAR scale.

The ImageNet variant is torchvision's single-tower layout: convolutions 64,
192, 384, 256 and 256 wide, no local response normalisation, 61,100,840
parameters at 224x224 with 1000 classes. (The paper split 96, 256, 384, 384
and 256 filters over two GPUs, with local response normalisation: about 60M
parameters.) The small variant,
chosen by ``cfg.stem`` ("auto": images of 64 px or less), keeps the five
convolutions and their widths but uses 3x3 kernels at stride 1 and 1024-wide fc
layers: an 11x11/4 kernel would reduce a 32x32 image to 6x6 at once, and the
4096-wide layers were sized for 1000 classes.
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import fully_connected_stack, image_input, logits_head
from engine.models.registry import use_small_variant

# (filters, kernel) of the five convolutions; "pool" marks a 3x3/2 max pooling.
CONV_LAYOUT = ((64, 11), "pool", (192, 5), "pool", (384, 3), (256, 3), (256, 3), "pool")
SMALL_CONV_LAYOUT = ((64, 3), "pool", (192, 3), "pool", (384, 3), (256, 3), (256, 3), "pool")


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """AlexNet, small or ImageNet variant per ``cfg.stem``; ``cfg.dropout`` before the logits."""
    small = use_small_variant(cfg, input_shape)
    inputs = image_input(input_shape)
    x = _small_features(inputs) if small else _imagenet_features(inputs)
    x = fully_connected_stack(x, 1024 if small else 4096, name="classifier")
    outputs = logits_head(x, num_classes, cfg.dropout)
    return keras.Model(inputs, outputs, name="alexnet_small" if small else "alexnet")


def _imagenet_features(x: keras.KerasTensor) -> keras.KerasTensor:
    # torchvision pads conv1 by 2 and pools "valid": 224 -> 55 -> 27 -> 13 -> 6.
    x = layers.ZeroPadding2D(2, name="conv1_pad")(x)
    return _features(x, CONV_LAYOUT, first_strides=4, padding_first="valid", pool_padding="valid")


def _small_features(x: keras.KerasTensor) -> keras.KerasTensor:
    # "same" pooling halves with rounding up: 32 -> 16 -> 8 -> 4.
    return _features(
        x, SMALL_CONV_LAYOUT, first_strides=1, padding_first="same", pool_padding="same"
    )


def _features(x, layout, first_strides: int, padding_first: str, pool_padding: str):
    conv_index = pool_index = 0
    for item in layout:
        if item == "pool":
            pool_index += 1
            x = layers.MaxPooling2D(3, 2, padding=pool_padding, name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        filters, kernel = item
        first = conv_index == 1
        x = layers.Conv2D(
            filters,
            kernel,
            strides=first_strides if first else 1,
            padding=padding_first if first else "same",
            activation="relu",
            name=f"conv{conv_index}",
        )(x)
    return x
