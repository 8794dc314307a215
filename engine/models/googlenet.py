"""GoogLeNet, Inception v1 (Szegedy et al., 2014), with BatchNorm as torchvision has it.

Each convolution is conv-BN-ReLU: the plain 2014 network needs its auxiliary
heads and careful schedules to train at all. The 5x5 branch is a true 5x5
(torchvision's is 3x3, a bug it keeps for its weights). At 224x224 with 1000
classes that is 7,005,832 trainable parameters, within 3% of the paper's
"about 6.8M" (its Table 1 rounds each layer's count).

With ``cfg.aux_heads`` the model returns ``[main, aux1, aux2]``, three float32
logits tensors: the paper's auxiliary classifiers after inception 4a and 4d
(weight them 0.3 in the loss, use ``main`` alone for evaluation). Without it,
the model returns ``main`` alone.

The small stem (``cfg.stem``; "auto": images of 64 px or less) is one 3x3
convolution to 192 channels at full resolution, as in common CIFAR versions;
stages 3, 4 and 5 then see 32x32, 16x16 and 8x8. The paper puts dropout 0.4
before the classifier: set ``model.dropout = 0.4`` for that.
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import conv_bn_relu, image_input, logits_head, pooled_logits
from engine.models.registry import use_small_variant

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection): Table 1 of the paper.
STAGE3 = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64)}
STAGE4 = {
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
}
STAGE5 = {"5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128)}
AUX_HEADS_AFTER = ("4a", "4d")


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """GoogLeNet; a list of three outputs when ``cfg.aux_heads`` (see the module docstring)."""
    inputs = image_input(input_shape)
    small = use_small_variant(cfg, input_shape)
    x = _small_stem(inputs) if small else _imagenet_stem(inputs)
    x = _inception_stage(x, STAGE3)
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool3")(x)
    aux_outputs = []
    for name, widths in STAGE4.items():
        x = inception_module(x, widths, name=f"inception{name}")
        if cfg.aux_heads and name in AUX_HEADS_AFTER:
            aux_name = f"aux{len(aux_outputs) + 1}"
            aux_outputs.append(auxiliary_head(x, num_classes, name=aux_name))
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool4")(x)
    x = _inception_stage(x, STAGE5)
    main = pooled_logits(x, num_classes, cfg.dropout)
    outputs = [main, *aux_outputs] if cfg.aux_heads else main
    return keras.Model(inputs, outputs, name="googlenet_small" if small else "googlenet")


def _imagenet_stem(x: keras.KerasTensor) -> keras.KerasTensor:
    # 224 -> 112 -> 56 -> 28: stage 3 starts at 28x28 as in the paper.
    x = conv_bn_relu(x, 64, 7, strides=2, name="stem1")
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool1")(x)
    x = conv_bn_relu(x, 64, 1, name="stem2")
    x = conv_bn_relu(x, 192, 3, name="stem3")
    return layers.MaxPooling2D(3, 2, padding="same", name="stem_pool2")(x)


def _small_stem(x: keras.KerasTensor) -> keras.KerasTensor:
    return conv_bn_relu(x, 192, 3, name="stem")


def _inception_stage(x: keras.KerasTensor, modules: dict) -> keras.KerasTensor:
    for name, widths in modules.items():
        x = inception_module(x, widths, name=f"inception{name}")
    return x


def inception_module(x: keras.KerasTensor, widths: tuple, name: str) -> keras.KerasTensor:
    """Four parallel branches (1x1; 1x1-3x3; 1x1-5x5; pool-1x1) joined on channels."""
    one, reduce3, three, reduce5, five, pool_projection = widths
    branch1 = conv_bn_relu(x, one, 1, name=f"{name}_1x1")
    branch3 = conv_bn_relu(x, reduce3, 1, name=f"{name}_3x3_reduce")
    branch3 = conv_bn_relu(branch3, three, 3, name=f"{name}_3x3")
    branch5 = conv_bn_relu(x, reduce5, 1, name=f"{name}_5x5_reduce")
    branch5 = conv_bn_relu(branch5, five, 5, name=f"{name}_5x5")
    pooled = layers.MaxPooling2D(3, 1, padding="same", name=f"{name}_pool")(x)
    pooled = conv_bn_relu(pooled, pool_projection, 1, name=f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_concat")([branch1, branch3, branch5, pooled])


def auxiliary_head(x: keras.KerasTensor, num_classes: int, name: str) -> keras.KerasTensor:
    """The paper's auxiliary classifier: avgpool 5x5/3, 1x1 conv 128, fc 1024, dropout 0.7."""
    x = layers.AveragePooling2D(5, 3, name=f"{name}_pool")(x)
    x = conv_bn_relu(x, 128, 1, name=f"{name}_proj")
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    return logits_head(x, num_classes, dropout=0.7, name=f"{name}_logits")
