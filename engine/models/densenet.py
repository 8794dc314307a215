"""DenseNet-BC (Huang et al., 2016): dense blocks of bottleneck layers, compressing transitions.

Every layer is BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) and its k = ``growth_rate``
channels are concatenated onto its input; transitions halve the channels
(compression 0.5) and the image (2x2 average pooling). The defaults,
``growth_rate = 32`` and ``block_config = [6, 12, 24, 16]``, are DenseNet-121
(7,978,856 trainable parameters with 1000 classes, as torchvision and
keras.applications; 8,062,504 with BatchNorm's moving statistics). The stem
has 2k filters: 7x7/2 conv and 3x3/2 max pooling for ImageNet, as the paper;
for small images (``cfg.stem``; "auto": 64 px or less) one 3x3 conv and no
pooling, the common CIFAR form.
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import bn_relu, conv_bn_relu, image_input, pooled_logits
from engine.models.registry import use_small_variant

BOTTLENECK_WIDTH = 4  # the 1x1 conv makes 4k channels for the 3x3 conv
COMPRESSION = 0.5


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """DenseNet from ``cfg.growth_rate`` and ``cfg.block_config``; ``cfg.dropout`` before logits."""
    growth_rate = cfg.growth_rate
    inputs = image_input(input_shape)
    if use_small_variant(cfg, input_shape):
        x = layers.Conv2D(2 * growth_rate, 3, padding="same", use_bias=False, name="stem_conv")(
            inputs
        )
    else:
        x = _imagenet_stem(inputs, 2 * growth_rate)
    for index, layer_count in enumerate(cfg.block_config, start=1):
        x = dense_block(x, layer_count, growth_rate, name=f"block{index}")
        if index < len(cfg.block_config):
            x = transition(x, name=f"transition{index}")
    x = bn_relu(x, name="final")
    outputs = pooled_logits(x, num_classes, cfg.dropout)
    return keras.Model(inputs, outputs, name=densenet_name(cfg.block_config, growth_rate))


def densenet_name(block_config: list[int], growth_rate: int) -> str:
    """``densenet<depth>``: two convs a layer, the stem, the transitions and the classifier."""
    depth = 2 * sum(block_config) + len(block_config) + 1
    return f"densenet{depth}" if growth_rate == 32 else f"densenet{depth}_k{growth_rate}"


def _imagenet_stem(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = conv_bn_relu(x, filters, 7, strides=2, name="stem")
    return layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)


def dense_block(
    x: keras.KerasTensor, layer_count: int, growth_rate: int, name: str
) -> keras.KerasTensor:
    """``layer_count`` dense layers, each adding ``growth_rate`` channels."""
    for index in range(1, layer_count + 1):
        x = dense_layer(x, growth_rate, name=f"{name}_layer{index}")
    return x


def dense_layer(x: keras.KerasTensor, growth_rate: int, name: str) -> keras.KerasTensor:
    """BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k, concatenated onto the input."""
    y = bn_relu(x, name=f"{name}_1")
    y = layers.Conv2D(BOTTLENECK_WIDTH * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = bn_relu(y, name=f"{name}_2")
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def transition(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """BN-ReLU, 1x1 conv to half the channels, 2x2 average pooling."""
    filters = int(x.shape[-1] * COMPRESSION)
    x = bn_relu(x, name=name)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)
