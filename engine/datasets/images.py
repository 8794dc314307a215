"""Image transforms shared by the dataset modules: resize, channels, normalise, augment."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from engine.config import ConfigError


def resize(images: tf.Tensor, size: Sequence[int], method: str) -> tf.Tensor:
    """Resize ``[..., H, W, C]`` images to ``size`` as float32, keeping their value range."""
    images = tf.cast(images, tf.float32)
    if tuple(images.shape[-3:-1]) == tuple(size):
        return images
    return tf.image.resize(images, list(size), method=method)


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels (0..255) as float32 in [0, 1]; float images are taken as already there."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def match_channels(images: tf.Tensor, source: int, target: int, what: str) -> tf.Tensor:
    """Convert ``source`` channels to ``target``: gray <-> RGB, and RGBA in or out.

    Raises:
        ConfigError: for a conversion with no sensible meaning (e.g. 2 channels).
    """
    if source == target:
        return images
    if source == 1:
        return tf.repeat(images, target, axis=-1)
    if target == 1 and source in (3, 4):
        return tf.image.rgb_to_grayscale(images[..., :3])
    if (source, target) == (4, 3):
        return images[..., :3]
    if (source, target) == (3, 4):
        # An opaque alpha channel: ones at the scale of the colour channels.
        return tf.concat([images, tf.ones_like(images[..., :1])], axis=-1)
    raise ConfigError(
        f"data.channels: {what} has {source} channels and cannot be converted to {target}; "
        "use 1 (gray), 3 (RGB) or 4 (RGBA)"
    )


def normalizer(mean: Sequence[float], std: Sequence[float]):
    """The seed notes' ``normalize(x, mean, std)`` with the statistics bound in."""
    mean_tensor = tf.constant(mean, tf.float32)
    std_tensor = tf.constant(std, tf.float32)

    def normalize(images: tf.Tensor) -> tf.Tensor:
        return (images - mean_tensor) / std_tensor

    return normalize


def augment_batch(
    images: tf.Tensor, seed: tf.Tensor, *, flip: bool, crop_padding: int
) -> tf.Tensor:
    """Random horizontal flips and padded random crops, per example, from a stateless seed."""
    if flip:
        images = random_flip(images, tf.random.experimental.stateless_fold_in(seed, 1))
    if crop_padding:
        crop_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        images = random_crop(images, crop_seed, crop_padding)
    return images


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    batch = tf.shape(images)[0]
    flip = tf.random.stateless_uniform([batch], seed=seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def random_crop(images: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per example.

    Zero is the mean pixel once normalised, so the padding adds no false edges.
    ``crop_and_resize`` with pixel-aligned boxes is an exact crop, done for the
    whole batch in one op.
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    batch = tf.shape(images)[0]
    offsets = tf.random.stateless_uniform(
        [batch, 2], seed=seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    offsets = tf.cast(offsets, tf.float32)
    padded_height, padded_width = height + 2 * padding, width + 2 * padding
    top = offsets[:, 0] / (padded_height - 1)
    left = offsets[:, 1] / (padded_width - 1)
    bottom = (offsets[:, 0] + height - 1) / (padded_height - 1)
    right = (offsets[:, 1] + width - 1) / (padded_width - 1)
    boxes = tf.stack([top, left, bottom, right], axis=1)
    return tf.image.crop_and_resize(
        padded, boxes, tf.range(batch), [height, width], method="nearest"
    )


def crop_padding_for(image_size: Sequence[int]) -> int:
    """4 pixels for 32x32 (the CIFAR recipe), 1/8 of the shorter side in general."""
    return max(1, min(image_size) // 8)
