"""ResNet (He et al., 2015): one builder; ResNet-18, 34, 50, 101, 152 are its arguments.

As keras.applications' ``ResNet(stack_fn, ...)``, ``build_resnet`` owns the
stem and the head and stacks one block function per stage:

    build_resnet(shape, 1000, [2, 2, 2, 2], "basic")       # ResNet-18, 11.7M params
    build_resnet(shape, 1000, [3, 4, 6, 3], "basic")       # ResNet-34, 21.8M
    build_resnet(shape, 1000, [3, 4, 6, 3], "bottleneck")  # ResNet-50, 25.6M

Stage ``i`` has ``64 * 2**i`` filters (times 4 at a bottleneck's output) and
every stage after the first halves the image. Bottleneck blocks stride on
their 3x3 convolution (ResNet v1.5, as torchvision). Parameter counts match
torchvision's; keras.applications' ResNet50 also has conv biases before its
BatchNorms, which do nothing and are left out here. For images of 64 px or
less the stem is one 3x3 convolution and no pooling (the common CIFAR
ResNet-18), not the paper's 7x7/2 convolution and 3x3/2 max pooling.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from engine.config import ConfigError, ModelConfig
from engine.models.common import conv_bn, conv_bn_relu, image_input, pooled_logits
from engine.models.registry import use_small_variant

BLOCK_EXPANSION = {"basic": 1, "bottleneck": 4}
STEMS = ("small", "imagenet")


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """ResNet from ``cfg.blocks`` and ``cfg.block_type``; stem per ``cfg.stem``."""
    return build_resnet(
        input_shape,
        num_classes,
        blocks=cfg.blocks,
        block_type=cfg.block_type,
        stem="small" if use_small_variant(cfg, input_shape) else "imagenet",
        dropout=cfg.dropout,
    )


def build_resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    blocks: list[int],
    block_type: str = "basic",
    stem: str = "imagenet",
    dropout: float = 0.0,
    name: str | None = None,
) -> keras.Model:
    """Build a ResNet whose stage ``i`` stacks ``blocks[i]`` blocks of ``block_type``.

    Args:
        input_shape: ``(height, width, channels)``.
        num_classes: Width of the logits.
        blocks: Blocks per stage, e.g. ``[2, 2, 2, 2]``; any number of stages.
        block_type: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1-3x3-1x1).
        stem: ``"small"``: one 3x3 conv, for images of 64 px or less;
            ``"imagenet"``: 7x7/2 conv and 3x3/2 max pooling.
        dropout: Rate before the final classifier.
        name: Model name; ``resnet<depth>`` by default.

    Raises:
        ConfigError: an argument is out of range; the message quotes it.
    """
    _check_arguments(blocks, block_type, stem)
    inputs = image_input(input_shape)
    x = _imagenet_stem(inputs) if stem == "imagenet" else conv_bn_relu(inputs, 64, 3, name="stem")
    x = stack_stages(x, blocks, BLOCKS[block_type])
    outputs = pooled_logits(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name or resnet_name(blocks, block_type))


def resnet_name(blocks: list[int], block_type: str) -> str:
    """``resnet<depth>``: weight layers in the blocks, plus the stem conv and the classifier."""
    layers_per_block = 3 if block_type == "bottleneck" else 2
    return f"resnet{layers_per_block * sum(blocks) + 2}"


def _check_arguments(blocks: Any, block_type: Any, stem: Any) -> None:
    is_count = [isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in blocks or []]
    if not isinstance(blocks, (list, tuple)) or not blocks or not all(is_count):
        raise ConfigError(
            f"model.blocks: got {blocks!r}; expected a non-empty list of positive "
            "integers, e.g. [2, 2, 2, 2]"
        )
    if block_type not in BLOCK_EXPANSION:
        raise ConfigError(f"model.block_type: got {block_type!r}; expected 'basic' or 'bottleneck'")
    if stem not in STEMS:
        raise ConfigError(f"ResNet stem: got {stem!r}; expected 'small' or 'imagenet'")


def _imagenet_stem(x: keras.KerasTensor) -> keras.KerasTensor:
    x = conv_bn_relu(x, 64, 7, strides=2, name="stem")
    return layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)


def stack_stages(x: keras.KerasTensor, blocks: list[int], block) -> keras.KerasTensor:
    """Stage ``i`` stacks ``blocks[i]`` blocks of ``64 * 2**i`` filters; later stages stride 2."""
    for stage, count in enumerate(blocks):
        for index in range(count):
            strides = 2 if stage > 0 and index == 0 else 1
            name = f"stage{stage + 1}_block{index + 1}"
            x = block(x, 64 * 2**stage, strides, name=name)
    return x


def basic_block(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    """Two 3x3 convolutions around an identity (or 1x1 projection) shortcut."""
    shortcut = _shortcut(x, filters, strides, name)
    y = conv_bn_relu(x, filters, 3, strides, name=f"{name}_1")
    y = conv_bn(y, filters, 3, name=f"{name}_2")
    return _merge(shortcut, y, name)


def bottleneck_block(
    x: keras.KerasTensor, filters: int, strides: int, name: str
) -> keras.KerasTensor:
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * filters``, plus the shortcut."""
    expanded = filters * BLOCK_EXPANSION["bottleneck"]
    shortcut = _shortcut(x, expanded, strides, name)
    y = conv_bn_relu(x, filters, 1, name=f"{name}_1")
    y = conv_bn_relu(y, filters, 3, strides, name=f"{name}_2")
    y = conv_bn(y, expanded, 1, name=f"{name}_3")
    return _merge(shortcut, y, name)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def _shortcut(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    # Project only when the shape changes (option B of the paper).
    if strides == 1 and x.shape[-1] == filters:
        return x
    return conv_bn(x, filters, 1, strides, name=f"{name}_projection")


def _merge(shortcut: keras.KerasTensor, y: keras.KerasTensor, name: str) -> keras.KerasTensor:
    x = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(x)
