"""Which module builds each architecture, and the smallest image each one accepts.

TF-free on purpose: the minimum sizes live here rather than in the family
modules so that ``min_input_size`` answers without importing Keras. A family's
module is imported only when a model of that family is built.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config import ARCHITECTURES, ConfigError, ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    import keras

# stem = "auto" picks the small-image (CIFAR-style) variant when the shorter
# image side is at most this many pixels: an ImageNet stem would shrink a
# 32x32 image to 8x8 before the first stage.
SMALL_IMAGE_MAX = 64


@dataclass(frozen=True)
class KerasBase:
    """A ``keras.applications`` network that a family builds on, and pretrained weights load into.

    ``module`` names ``keras.applications.<module>``, whose ``preprocess_input``
    the images go through (from 0..255) whenever ``model.weights`` is set: the
    weights were trained on images prepared that way, not on convdeck's
    per-channel standardisation. ``preprocessing`` says what it does, for people.
    """

    module: str
    preprocessing: str


@dataclass(frozen=True)
class Family:
    """A family's module (with ``build(cfg, input_shape, num_classes)``) and its minimum size.

    ``keras_base``: the keras.applications network it builds on, for the families
    that take pretrained weights (``model.weights``, ``freeze_base``, fine-tuning).
    """

    module: str
    min_size: Callable[[ModelConfig], int]
    keras_base: KerasBase | None = None


def _by_stem(small: int, imagenet: int) -> Callable[[ModelConfig], int]:
    # "auto" only chooses the ImageNet variant above SMALL_IMAGE_MAX, where every
    # ImageNet minimum below is already met, so "auto" answers with the small one.
    return lambda cfg: imagenet if cfg.stem == "imagenet" else small


def _googlenet_min(cfg: ModelConfig) -> int:
    # The auxiliary heads pool 5x5/3 (valid) over stage 4, which the ImageNet
    # stem has shrunk by 16: ceil(65 / 16) = 5.
    return 65 if cfg.stem == "imagenet" and cfg.aux_heads else 32


def _densenet_min(cfg: ModelConfig) -> int:
    # Each transition halves (valid 2x2 pooling); the ImageNet stem divides by 4.
    halvings = len(cfg.block_config) - 1 + (2 if cfg.stem == "imagenet" else 0)
    return max(32, 2**halvings)


FAMILIES: dict[str, Family] = {
    # 28: MNIST's size, which LeNet-5 pads to its 32x32 input as the paper
    # did, leaving the 5x5x16 map fc120 was designed on. Padding would take
    # smaller images too, but a digit lost in a wide border is not what the
    # network was made for: upsample those (data.image_size = [32, 32]).
    "lenet5": Family("lenet5", lambda cfg: 28),
    # small: CIFAR scale, three stride-2 poolings leave 4x4. imagenet: the
    # 11x11/4 conv and three valid 3x3/2 poolings need 63 px to leave 1x1.
    "alexnet": Family("alexnet", _by_stem(small=32, imagenet=63)),
    # Five valid 2x2 poolings: 32 px leave a 1x1x512 map.
    "vgg": Family("vgg", lambda cfg: 32),
    # small: CIFAR scale (stage 5 sees 8x8); imagenet: see _googlenet_min.
    "googlenet": Family("googlenet", _googlenet_min),
    # Padding is "same" throughout; 32 (as keras.applications.ResNet50) keeps
    # the last stage at 4x4 (small stem) or 1x1 (ImageNet stem).
    "resnet": Family("resnet", _by_stem(small=32, imagenet=32)),
    # 32, as keras.applications.DenseNet121, or more for longer block configs.
    "densenet": Family("densenet", _densenet_min),
    # keras.applications.MobileNetV2 refuses images under 32x32.
    "mobilenetv2": Family(
        "mobilenetv2",
        lambda cfg: 32,
        # keras.applications' other modes, should a family build on them: "caffe" (resnet50,
        # vgg16: BGR minus ImageNet's mean) and "torch" (densenet: [0, 1] standardised).
        keras_base=KerasBase("mobilenet_v2", "pixels scaled to [-1, 1], mode 'tf'"),
    ),
}
# A user's "module:function" decides for itself; its own errors are translated.
USER_FAMILY = Family("user", lambda cfg: 1)


def family_for(arch: str) -> Family:
    """The family that builds ``arch``, raising ConfigError for an unknown name."""
    if ":" in arch:
        return USER_FAMILY
    if arch in FAMILIES:
        return FAMILIES[arch]
    raise ConfigError(
        f"model.arch: unknown architecture {arch!r}; expected one of "
        f"{', '.join(ARCHITECTURES)} or 'package.module:function'"
    )


def min_input_size(cfg: ModelConfig) -> int:
    """The smallest image height and width, in pixels, that ``cfg.arch`` accepts.

    Args:
        cfg: The model section; ``stem``, ``aux_heads`` and ``block_config``
            matter for some families.

    Returns:
        The minimum side length; 1 for a user's ``module:function`` model. For
        ``stem = "auto"`` it is the small variant's: images above 64 px get
        the ImageNet variant, which only a DenseNet of more than five blocks
        finds too small (``build_model`` then says so).

    Raises:
        ConfigError: ``cfg.arch`` names no known architecture.
    """
    return family_for(cfg.arch).min_size(cfg)


def input_preprocessing(cfg: ModelConfig) -> KerasBase | None:
    """The keras.applications base whose ``preprocess_input`` this model's images go through.

    None: the images get convdeck's per-channel standardisation instead (no
    pretrained weights, or a family without a keras.applications base). The
    one place both the data pipeline and the model builder ask.
    """
    if cfg.weights is None or ":" in cfg.arch:
        return None
    return family_for(cfg.arch).keras_base


def check_transfer_settings(cfg: ModelConfig, epochs: int, fine_tune_at_epoch: int | None) -> None:
    """Refuse transfer-learning settings that cannot work together, one line each.

    Raises:
        ConfigError: weights or freezing asked of a family without a keras.applications
            base, or a fine-tune stage that would never start or has nothing frozen before it.
    """
    if ":" in cfg.arch or cfg.arch not in FAMILIES:
        return  # a user's builder reads its own settings; an unknown arch is refused elsewhere
    takes_weights = sorted(name for name, family in FAMILIES.items() if family.keras_base)
    asked = [name for name, on in (("weights", cfg.weights), ("freeze_base", cfg.freeze_base)) if on]
    if fine_tune_at_epoch is not None:
        asked.append("train.fine_tune_at_epoch")
    if asked and FAMILIES[cfg.arch].keras_base is None:
        setting = asked[0] if "." in asked[0] else f"model.{asked[0]}"
        raise ConfigError(
            f"{setting}: model.arch {cfg.arch!r} is built by convdeck, with no pretrained base; "
            f"transfer learning needs one of {', '.join(takes_weights)}"
        )
    if fine_tune_at_epoch is None:
        return
    if fine_tune_at_epoch >= epochs:
        raise ConfigError(
            f"train.fine_tune_at_epoch: got {fine_tune_at_epoch}; the run has {epochs} epochs, "
            f"so fine-tuning would never start (expected 1 to {epochs - 1}, or raise train.epochs)"
        )
    if not cfg.freeze_base:
        raise ConfigError(
            f"train.fine_tune_at_epoch: got {fine_tune_at_epoch}, but model.freeze_base is false: "
            "the base trains from the start and there is nothing to unfreeze; set "
            "model.freeze_base = true (the head trains alone until then)"
        )


def use_small_variant(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> bool:
    """Whether to build the small-image (CIFAR-style) stem or head for this config and shape."""
    if cfg.stem == "auto":
        return min(input_shape[:2]) <= SMALL_IMAGE_MAX
    return cfg.stem == "small"


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """Build the network ``cfg`` describes for images of ``input_shape``.

    Args:
        cfg: The model section of the run config.
        input_shape: ``(height, width, channels)`` of the normalised images.
        num_classes: Width of the output.

    Returns:
        A ``keras.Model`` emitting float32 logits ``[batch, num_classes]``; with
        GoogLeNet's ``aux_heads``, the list ``[main, aux1, aux2]`` of such logits.

    Raises:
        ConfigError: one user-facing line, for an unknown architecture, an image
            smaller than the architecture accepts, or a combination that cannot
            be built (see each family's ``build``).
    """
    input_shape = _checked_input_shape(input_shape)
    num_classes = _checked_num_classes(num_classes)
    family = family_for(cfg.arch)
    _check_image_size(cfg, input_shape, family)
    module = importlib.import_module(f"{__package__}.{family.module}")
    return module.build(cfg, input_shape, num_classes)


def _checked_input_shape(input_shape: Any) -> tuple[int, int, int]:
    # Integers of any kind (numpy's, from a dataset's shapes) are fine; None is not.
    try:
        shape = tuple(operator.index(n) for n in input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(
            f"input shape: got {input_shape!r}; expected (height, width, channels), "
            "three positive integers"
        )
    return shape


def _checked_num_classes(num_classes: Any) -> int:
    try:
        count = operator.index(num_classes)
    except TypeError:
        count = 0
    if count < 2:
        raise ConfigError(f"data.num_classes: got {num_classes!r}; expected an integer >= 2")
    return count


def _check_image_size(cfg: ModelConfig, input_shape: tuple[int, int, int], family: Family) -> None:
    # Check the variant that will be built: "auto" gives images above
    # SMALL_IMAGE_MAX the ImageNet stem, whose minimum can be larger.
    stem = "small" if use_small_variant(cfg, input_shape) else "imagenet"
    minimum = family.min_size(cfg.model_copy(update={"stem": stem}))
    height, width = input_shape[:2]
    if min(height, width) >= minimum:
        return
    suggestion = [max(height, minimum), max(width, minimum)]
    if cfg.stem != "auto":
        variant, hint = f" with model.stem {cfg.stem!r}", ""
    elif stem == "imagenet":
        variant = f" with the ImageNet stem (model.stem 'auto' above {SMALL_IMAGE_MAX} px)"
        hint = ", or model.stem = 'small'"
    else:
        variant, hint = "", ""
    raise ConfigError(
        f"model.arch {cfg.arch!r}{variant} needs images of at least {minimum}x{minimum}; "
        f"got {height}x{width} (set data.image_size = {suggestion}{hint})"
    )
