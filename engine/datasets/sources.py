"""Example sources: how one split's examples are addressed, ordered and batched.

Three shapes of source cover every dataset:

- ``TensorSource``: the whole split is one tensor in host memory; an epoch is a
  seeded permutation of indices and a gather per batch (the fastest path).
- ``BatchIndexedSource`` and ``IndexedSource``: examples are made on demand
  from their indices, a batch at a time (synthetic images) or one at a time
  (image files); the permutation runs over indices, so skipping batches
  costs nothing.
- ``StreamSource``: records arrive in a fixed order (TFDS); an epoch is a
  seeded shuffle buffer, and skipping batches reads through them.

Every epoch order is a pure function of ``(seed, epoch)``, so a resumed run
sees exactly the batches the interrupted one would have seen. The pair may be
Python ints or an int64 tensor of two (an epoch number known only inside a
dataset function that makes every epoch in turn): both give the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import tensorflow as tf

# (seed, epoch): the stateless seed of one epoch's order, as two ints or an int64
# tensor of two; None keeps source order.
EpochOrder = Optional[Union[tuple[int, int], tf.Tensor]]
ImageFn = Callable[[tf.Tensor], tf.Tensor]
ExampleFn = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
AUTOTUNE = tf.data.AUTOTUNE


def on_host(function: Callable) -> Callable:
    """Run eager tensor work on the CPU: data must not land in (or grab) GPU memory."""

    def wrapper(*args, **kwargs):
        with tf.device("/CPU:0"):
            return function(*args, **kwargs)

    return wrapper


@on_host
def permutation(count: int, order: EpochOrder) -> tf.Tensor:
    """Indices ``0..count-1`` in the epoch's order (identity when ``order`` is None)."""
    indices = tf.range(count, dtype=tf.int64)
    if order is None:
        return indices
    return tf.random.experimental.stateless_shuffle(indices, seed=order_tensor(order))


def order_tensor(order: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    """``(seed, epoch)`` as the int64 tensor of two that stateless random ops take."""
    return tf.cast(order, tf.int64)


def int_seed(order: tuple[int, int]) -> int:
    """A well-mixed non-negative int seed for stateful ops that take one integer.

    Python ints only: a streamed split's shuffle is seeded eagerly, one epoch at a
    time (see ``DataBundle.train_for_epochs``).
    """
    words = [value % 2**32 for value in order]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class BatchIndexedSource:
    """A split of ``count`` examples loaded a batch at a time by ``load_batch(indices)``."""

    count: int
    load_batch: ExampleFn

    def batches(
        self, batch_size: int, *, order: EpochOrder, skip_batches: int = 0, drop_remainder: bool
    ) -> tf.data.Dataset:
        indices = tf.data.Dataset.from_tensor_slices(permutation(self.count, order))
        batched = indices.batch(batch_size, drop_remainder=drop_remainder).skip(skip_batches)
        # One gather per batch: far cheaper than slicing and re-batching examples.
        return batched.map(self.load_batch, num_parallel_calls=AUTOTUNE)

    def map_images(self, transform: ImageFn) -> BatchIndexedSource:
        load = self.load_batch

        def load_transformed(indices):
            images, labels = load(indices)
            return transform(images), labels

        return BatchIndexedSource(self.count, load_transformed)


class TensorSource(BatchIndexedSource):
    """A split held in host memory as ``images [N,H,W,C] float32`` and ``labels [N] int32``."""

    @on_host
    def __init__(self, images, labels) -> None:
        self.images = tf.convert_to_tensor(images, tf.float32)
        self.labels = tf.convert_to_tensor(labels, tf.int32)
        super().__init__(int(self.labels.shape[0]), self.gather)

    def gather(self, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(self.images, indices), tf.gather(self.labels, indices)

    @on_host
    def map_images(self, transform: ImageFn) -> TensorSource:
        # Transform once, not per batch: the images are all here already.
        return TensorSource(transform(self.images), self.labels)


@dataclass
class IndexedSource:
    """A split of ``count`` examples made by ``load_example(index)`` on demand."""

    count: int
    load_example: ExampleFn

    def batches(
        self, batch_size: int, *, order: EpochOrder, skip_batches: int = 0, drop_remainder: bool
    ) -> tf.data.Dataset:
        indices = tf.data.Dataset.from_tensor_slices(permutation(self.count, order))
        # Skipping indices before loading makes an exact resume free.
        indices = indices.skip(skip_batches * batch_size)
        examples = indices.map(self.load_example, num_parallel_calls=AUTOTUNE)
        return examples.batch(batch_size, drop_remainder=drop_remainder)

    def map_images(self, transform: ImageFn) -> IndexedSource:
        load = self.load_example

        def load_transformed(index):
            image, label = load(index)
            return transform(image), label

        return IndexedSource(self.count, load_transformed)


@dataclass
class StreamSource:
    """A split read in a fixed order: raw ``records``, turned into examples by ``prepare``.

    The shuffle buffer holds raw records (uint8 at their stored size), and
    ``prepare`` resizes after it, so a large buffer costs as little as it can.
    """

    records: tf.data.Dataset
    prepare: Callable
    count: int
    shuffle_buffer: int

    def batches(
        self, batch_size: int, *, order: EpochOrder, skip_batches: int = 0, drop_remainder: bool
    ) -> tf.data.Dataset:
        records = self.records
        if order is not None and self.shuffle_buffer > 1:
            records = records.shuffle(
                self.shuffle_buffer, seed=int_seed(order), reshuffle_each_iteration=False
            )
        examples = records.map(self.prepare, num_parallel_calls=AUTOTUNE)
        return examples.batch(batch_size, drop_remainder=drop_remainder).skip(skip_batches)

    def map_images(self, transform: ImageFn) -> StreamSource:
        prepare = self.prepare

        def prepare_transformed(record):
            image, label = prepare(record)
            return transform(image), label

        return StreamSource(self.records, prepare_transformed, self.count, self.shuffle_buffer)


Source = Union[BatchIndexedSource, IndexedSource, StreamSource]


@dataclass
class RawData:
    """What a dataset module opens: splits of unnormalised images and what they hold."""

    name: str
    train: Source
    val: Optional[Source]
    num_classes: int
    input_shape: tuple[int, int, int]
    # Synthetic images are zero-mean, unit-variance by construction.
    normalized: bool = False
    # One line each, for the run's log: what opening the data left out or changed.
    warnings: list[str] = field(default_factory=list)


def materialize(source: Source, chunk_size: int = 1024) -> TensorSource:
    """Read a whole split once, in source order, into host memory."""
    if isinstance(source, TensorSource):
        return source
    images, labels = [], []
    for image_batch, label_batch in source.batches(
        chunk_size, order=None, drop_remainder=False
    ).prefetch(AUTOTUNE):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not labels:
        return TensorSource(np.zeros((0, 1, 1, 1), np.float32), np.zeros((0,), np.int32))
    return TensorSource(np.concatenate(images), np.concatenate(labels))


def channel_stats(source: Source, limit: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over the first ``limit`` examples, in source order."""
    total = total_squares = 0.0
    pixels = 0
    for image_batch in image_batches(source, limit):
        values = image_batch.astype(np.float64).reshape(-1, image_batch.shape[-1])
        total = total + values.sum(0)
        total_squares = total_squares + (values**2).sum(0)
        pixels += values.shape[0]
    mean = total / pixels
    std = np.sqrt(np.maximum(total_squares / pixels - mean**2, 0.0))
    # A constant channel would divide by zero; leave its scale alone instead.
    std = np.where(std < 1e-6, 1.0, std)
    return [float(m) for m in mean], [float(s) for s in std]


def image_batches(source: Source, limit: int, chunk_size: int = 512):
    """The first ``limit`` images as numpy batches, straight from memory when held there."""
    if isinstance(source, TensorSource):
        for start in range(0, min(limit, source.count), chunk_size):
            yield source.images[start : start + chunk_size].numpy()
        return
    batches = source.batches(chunk_size, order=None, drop_remainder=False)
    for image_batch, _ in batches.take(-(-limit // chunk_size)):
        yield image_batch.numpy()
