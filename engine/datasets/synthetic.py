"""Random images of any shape, made in-graph, for throughput work and smoke tests.

Example ``i`` is a pure function of ``(data.seed, i)``: a random class, that
class's smooth pattern, and Gaussian noise. The pattern makes labels
learnable (a loss can fall); the mix keeps pixels at mean 0 and std 1, so no
statistics need computing. Noise comes from a bank drawn once (example ``i``
takes image ``i mod bank size``), so a batch costs two gathers and an add
however large the images: drawing fresh Gaussian noise for 256 images of
224x224x3 takes seconds of CPU, longer than a GPU step.
"""

from __future__ import annotations

import math

import tensorflow as tf

from engine.config import DataConfig
from engine.datasets.sources import BatchIndexedSource, RawData, on_host

DEFAULT_CHANNELS = 3
DEFAULT_CLASSES = 10
# Weight of the class pattern; the noise takes the rest of the unit variance.
SIGNAL = 0.5
NOISE = math.sqrt(1 - SIGNAL**2)
# Patterns are drawn on a coarse grid and upsampled, so they are smooth.
PATTERN_GRID = 4
NOISE_BANK_BYTES = 64 * 2**20


def open_synthetic(config: DataConfig) -> RawData:
    """``synthetic_examples`` training images and ``validation_split`` as many again for val."""
    channels = config.channels or DEFAULT_CHANNELS
    num_classes = config.num_classes or DEFAULT_CLASSES
    shape = (*config.image_size, channels)
    train_count = config.synthetic_examples
    val_count = int(train_count * config.validation_split)
    make_batch = batch_maker(shape, num_classes, train_count + val_count, config.seed)

    def make_val_batch(indices):
        # Validation examples take the indices after the training ones.
        return make_batch(indices + train_count)

    val = BatchIndexedSource(val_count, make_val_batch) if val_count else None
    return RawData(
        name="synthetic",
        train=BatchIndexedSource(train_count, make_batch),
        val=val,
        num_classes=num_classes,
        input_shape=shape,
        normalized=True,
    )


@on_host
def batch_maker(shape: tuple[int, int, int], num_classes: int, count: int, seed: int):
    """``indices -> (images, labels)`` over ``count`` examples, from tensors made once here."""
    # Weighted once here, so a batch is just gathers and one add.
    patterns = SIGNAL * class_patterns(shape, num_classes, seed)
    noise = NOISE * noise_bank(shape, count, seed)
    labels = tf.random.stateless_uniform(
        [count], seed=[seed, 1], maxval=num_classes, dtype=tf.int32
    )
    bank_size = tf.constant(noise.shape[0], tf.int64)

    def make_batch(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_labels = tf.gather(labels, indices)
        batch_noise = tf.gather(noise, indices % bank_size)
        return batch_noise + tf.gather(patterns, batch_labels), batch_labels

    return make_batch


def noise_bank(shape: tuple[int, int, int], count: int, seed: int) -> tf.Tensor:
    image_bytes = math.prod(shape) * 4
    size = min(count, max(16, NOISE_BANK_BYTES // image_bytes))
    return tf.random.stateless_normal([size, *shape], seed=[seed, 2])


def class_patterns(shape: tuple[int, int, int], num_classes: int, seed: int) -> tf.Tensor:
    """One smooth pattern per class, each scaled to mean 0 and std 1."""
    height, width, channels = shape
    coarse = tf.random.stateless_normal(
        [num_classes, PATTERN_GRID, PATTERN_GRID, channels], seed=[seed, 3]
    )
    smooth = tf.image.resize(coarse, [height, width], method="bilinear")
    mean, variance = tf.nn.moments(smooth, axes=[1, 2, 3], keepdims=True)
    return (smooth - mean) / tf.sqrt(variance + 1e-6)
