"""VGG (Simonyan and Zisserman, 2014): configurations A, B, D, E = VGG-11/13/16/19.

``cfg.batch_norm`` (on by default, which the paper predates: plain VGG-16
barely trains from scratch) adds BatchNorm after every convolution and drops
the conv bias it makes redundant. The ImageNet variant keeps the two 4096-wide fc
layers (VGG-16 without BN: 138,357,544 parameters at 224x224, as
keras.applications.VGG16). The small variant (``cfg.stem``; "auto": images of
64 px or less) ends in global average pooling and the classifier, the common
CIFAR form: at 32x32 the last map is 1x1x512 and needs no 4096-wide layers.
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import (
    conv_bn_relu,
    fully_connected_stack,
    image_input,
    logits_head,
    pooled_logits,
)
from engine.models.registry import use_small_variant

STAGE_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per stage, from Table 1 of the paper.
CONVS_PER_STAGE = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """VGG-``cfg.depth``, with BN if ``cfg.batch_norm``; ``cfg.dropout`` before the logits."""
    inputs = image_input(input_shape)
    x = _features(inputs, CONVS_PER_STAGE[cfg.depth], cfg.batch_norm)
    if use_small_variant(cfg, input_shape):
        outputs = pooled_logits(x, num_classes, cfg.dropout)
    else:
        x = fully_connected_stack(x, 4096, name="classifier")
        outputs = logits_head(x, num_classes, cfg.dropout)
    name = f"vgg{cfg.depth}_bn" if cfg.batch_norm else f"vgg{cfg.depth}"
    return keras.Model(inputs, outputs, name=name)


def _features(x: keras.KerasTensor, convs_per_stage, batch_norm: bool) -> keras.KerasTensor:
    stages = zip(convs_per_stage, STAGE_WIDTHS, strict=True)
    for stage, (count, filters) in enumerate(stages, start=1):
        for index in range(1, count + 1):
            x = _conv(x, filters, batch_norm, name=f"block{stage}_conv{index}")
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    return x


def _conv(x: keras.KerasTensor, filters: int, batch_norm: bool, name: str) -> keras.KerasTensor:
    if batch_norm:
        return conv_bn_relu(x, filters, 3, name=name)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=name)(x)
