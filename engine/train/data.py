"""Training and validation batches for a run: ``load_data(config.data, batch_size)``.

Every dataset kind (``digits``, ``synthetic``, ``tfds:NAME``, ``folder:PATH``)
is opened by its module in ``engine.datasets`` as unnormalised images in
[0, 1]; this module adds what they share: holding small splits in memory,
per-channel normalisation with training-set statistics, augmentation,
seeded per-epoch shuffling and batching.

An epoch's batches are a pure function of ``(seed, epoch)``, so
``train_for_epoch(epoch, skip_batches=k)`` resumes a run exactly where it
stopped, and ``train_for_epochs`` gives many epochs back to back, each made
only as the one before it ends. Mistakes in the data config raise ``ConfigError`` with one line.

Call this after the worker has configured its devices (memory growth,
virtual CPUs): building datasets initialises TensorFlow's runtime.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import tensorflow as tf

from engine.config import ConfigError, DataConfig, RunConfig
from engine.datasets.digits import open_digits
from engine.datasets.folder import open_folder
from engine.datasets.images import augment_batch, crop_padding_for, normalizer
from engine.datasets.sources import (
    AUTOTUNE,
    BatchIndexedSource,
    EpochOrder,
    RawData,
    Source,
    StreamSource,
    TensorSource,
    channel_stats,
    materialize,
    order_tensor,
)
from engine.datasets.synthetic import open_synthetic
from engine.datasets.tfds_source import open_tfds
from engine.models.registry import input_preprocessing

# "auto" holds decoded splits in memory below this size (float32 pixels).
CACHE_LIMIT_BYTES = 512 * 2**20
# Streamed datasets estimate their statistics from this many training images.
STATS_SAMPLE_SIZE = 4096

OPENERS: dict[str, Callable[[DataConfig], RawData]] = {
    "digits": open_digits,
    "synthetic": open_synthetic,
    "tfds": open_tfds,
    "folder": open_folder,
}


@dataclass
class DataBundle:
    """A run's data: batched ``(images [b,H,W,C] float32, labels [b] int32)`` datasets.

    ``train`` is epoch 0's batches (shuffled, augmented when configured,
    ``drop_remainder=True``, no repeat); ``val`` is unshuffled, or None when
    there is no validation split.
    """

    train: tf.data.Dataset
    val: Optional[tf.data.Dataset]
    num_classes: int
    input_shape: tuple[int, int, int]
    train_examples: int
    val_examples: int
    steps_per_epoch: int
    mean: list[float]
    std: list[float]
    description: str
    # What opening the data left out (e.g. images that cannot be decoded), for the run's log.
    warnings: list[str] = field(default_factory=list)
    _epoch_batches: Optional[EpochBatches] = field(default=None, repr=False, compare=False)

    def train_for_epoch(self, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
        """One epoch's training batches, shuffled by ``(seed, epoch)``.

        Args:
            epoch: Which epoch; the same epoch always yields the same batches.
            skip_batches: Batches of this epoch already trained on; the result
                starts with the next one (an exact mid-epoch resume).
        """
        if skip_batches < 0:
            raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
        if self._epoch_batches is None:
            # A bundle built by hand (a test's fake data): every epoch is ``train``.
            return self.train.skip(skip_batches)
        return self._epoch_batches(epoch, skip_batches)

    def train_for_epochs(
        self, first: int, end: int, batches_per_epoch: int, skip_batches: int = 0
    ) -> tf.data.Dataset:
        """Epochs ``first`` to ``end - 1`` back to back: what one iterator trains a whole run on.

        Each epoch yields exactly the first ``batches_per_epoch`` batches of
        ``train_for_epoch(epoch)`` (``first`` less its ``skip_batches``). The
        epochs after the first are made inside tf.data, by a function of the
        epoch number run as the one before ends: no Python, no new graph and
        no pipeline start on the training thread however long the run.

        Args:
            first: The epoch the batches start in.
            end: The epoch after the last one.
            batches_per_epoch: Batches an epoch trains on (the rest are left out).
            skip_batches: Batches of ``first`` already trained on.
        """
        head = self.train_for_epoch(first, skip_batches).take(max(0, batches_per_epoch - skip_batches))
        make = self._epoch_batches
        if make is None:
            later = self.train.take(batches_per_epoch).repeat(max(0, end - first - 1))
        elif not make.orders_in_graph:
            # A streamed split's shuffle takes its seed through tf.random's get_seed, which
            # cannot take an epoch known only in-graph once a global seed of 0 is set (the
            # default train.seed). Its epochs are long (it is streamed because it is large),
            # so making them all here costs a few ms an epoch, once, and no lump worth a thought.
            later = head.take(0)
            for epoch in range(first + 1, end):
                later = later.concatenate(make(epoch, 0).take(batches_per_epoch))
        else:
            later = tf.data.Dataset.range(first + 1, end).flat_map(
                lambda epoch: make(epoch, 0).take(batches_per_epoch)
            )
        return head.concatenate(later)


def load_data(
    data_cfg: DataConfig, batch_size: int, *, seed: int = 0, standardize: bool = True
) -> DataBundle:
    """Open ``data_cfg.dataset`` and batch it for training.

    Args:
        data_cfg: The run's data section.
        batch_size: Global batch size; training batches are all exactly this
            size, unless the training split is smaller than one batch.
        seed: Seeds the per-epoch shuffles and augmentation (the train/val
            split is fixed by ``data_cfg.seed``).
        standardize: False leaves the images in [0, 1] whatever ``data.normalize``
            says: the model preprocesses them itself, as its pretrained weights
            expect (``engine.models.registry.input_preprocessing`` decides).

    Raises:
        ConfigError: the dataset cannot be found, read or prepared as configured.
    """
    if batch_size <= 0:
        raise ConfigError(f"train.batch_size: must be > 0, got {batch_size}")
    raw = apply_cache_setting(open_raw(data_cfg), data_cfg)
    check_classes(raw, data_cfg)
    if raw.train.count == 0:
        raise ConfigError(f"dataset {data_cfg.dataset}: the training split has no examples")
    mean, std = normalization_stats(raw, data_cfg, standardize)
    train = normalized(raw.train, mean, std)
    val = normalized(raw.val, mean, std) if raw.val else None
    epoch_batches = EpochBatches(train, batch_size, seed, data_cfg)
    val_examples = val.count if val else 0
    return DataBundle(
        train=epoch_batches(0, 0),
        val=validation_batches(val, batch_size) if val else None,
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        train_examples=train.count,
        val_examples=val_examples,
        steps_per_epoch=max(1, train.count // batch_size),
        mean=mean,
        std=std,
        description=describe(raw, train.count, val_examples),
        warnings=raw.warnings,
        _epoch_batches=epoch_batches,
    )


def open_raw(data_cfg: DataConfig) -> RawData:
    kind = data_cfg.dataset.partition(":")[0]
    if kind not in OPENERS:
        raise ConfigError(f"data.dataset: unknown kind {kind!r}, got {data_cfg.dataset!r}")
    return OPENERS[kind](data_cfg)


def check_classes(raw: RawData, data_cfg: DataConfig) -> None:
    """A num_classes that disagrees with the data would train a wrong-sized head."""
    wanted = data_cfg.num_classes
    if wanted is not None and wanted != raw.num_classes:
        raise ConfigError(
            f"data.num_classes: {raw.name} has {raw.num_classes} classes, got {wanted}; "
            "leave it unset to use the dataset's"
        )


def apply_cache_setting(raw: RawData, data_cfg: DataConfig) -> RawData:
    """Decode small splits once into host memory (the ``cache`` setting)."""
    # Batch-indexed sources (in-memory tensors, synthetic) already cost no decoding.
    if isinstance(raw.train, BatchIndexedSource) or data_cfg.cache == "no":
        return raw
    if data_cfg.cache == "auto" and estimated_bytes(raw) >= CACHE_LIMIT_BYTES:
        return raw
    val = materialize(raw.val) if raw.val else None
    return dataclasses.replace(raw, train=materialize(raw.train), val=val)


def estimated_bytes(raw: RawData) -> int:
    examples = raw.train.count + (raw.val.count if raw.val else 0)
    return examples * math.prod(raw.input_shape) * 4


def standardizes(config: RunConfig) -> bool:
    """Whether the run's images get per-channel standardisation: not when its model
    preprocesses them for pretrained weights (the family table decides which)."""
    return input_preprocessing(config.model) is None


def normalization_stats(
    raw: RawData, data_cfg: DataConfig, standardize: bool = True
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (identity when not normalising)."""
    channels = raw.input_shape[-1]
    if not (standardize and data_cfg.normalize) or raw.normalized:
        return [0.0] * channels, [1.0] * channels
    # In memory the whole split is cheap to read; a stream is sampled.
    in_memory = isinstance(raw.train, TensorSource)
    return channel_stats(raw.train, raw.train.count if in_memory else STATS_SAMPLE_SIZE)


def normalized(source: Source, mean: list[float], std: list[float]) -> Source:
    if all(m == 0.0 for m in mean) and all(s == 1.0 for s in std):
        return source
    return source.map_images(normalizer(mean, std))


def validation_batches(val: Source, batch_size: int) -> tf.data.Dataset:
    """Every validation example once, in a fixed order, the last batch possibly short."""
    return val.batches(batch_size, order=None, drop_remainder=False).prefetch(AUTOTUNE)


class EpochBatches:
    """``(epoch, skip_batches) -> dataset``: the training batches of one epoch."""

    def __init__(self, train: Source, batch_size: int, seed: int, data_cfg: DataConfig) -> None:
        self.train = train
        self.batch_size = batch_size
        self.seed = seed
        # A split smaller than one batch still yields one (smaller) batch.
        self.drop_remainder = train.count >= batch_size
        self.flip = data_cfg.augment_flip
        self.crop_padding = crop_padding_for(data_cfg.image_size) if data_cfg.augment_crop else 0

    @property
    def orders_in_graph(self) -> bool:
        """Whether an epoch number known only inside tf.data orders its batches (not a streamed split)."""
        return not isinstance(self.train, StreamSource)

    def __call__(self, epoch: int | tf.Tensor, skip_batches: int) -> tf.data.Dataset:
        """The batches of ``epoch``: an int, or an int64 scalar inside a dataset function."""
        if isinstance(epoch, int):
            order = (self.seed, epoch)
        else:
            order = tf.stack([tf.constant(self.seed, tf.int64), epoch])
        batches = self.train.batches(
            self.batch_size,
            order=order,
            skip_batches=skip_batches,
            drop_remainder=self.drop_remainder,
        )
        if self.flip or self.crop_padding:
            batches = self.augmented(batches.enumerate(start=skip_batches), order)
        return batches.prefetch(AUTOTUNE)

    def augmented(self, numbered_batches: tf.data.Dataset, order: EpochOrder):
        # Each batch's randomness comes from (seed, epoch, batch number), so a
        # resumed epoch augments its remaining batches exactly as before.
        epoch_seed = order_tensor(order)

        def augment(batch_number, batch):
            images, labels = batch
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, batch_number)
            images = augment_batch(images, seed, flip=self.flip, crop_padding=self.crop_padding)
            return images, labels

        return numbered_batches.map(augment, num_parallel_calls=AUTOTUNE)


def describe(raw: RawData, train_examples: int, val_examples: int) -> str:
    height, width, channels = raw.input_shape
    return (
        f"{raw.name}: {train_examples} train / {val_examples} val, "
        f"{height}x{width}x{channels}, {raw.num_classes} classes"
    )


def with_delays(dataset: tf.data.Dataset, delay_before: Callable[[int], float]) -> tf.data.Dataset:
    """``dataset`` with element k held back ``delay_before(k)`` seconds: a stalled pipeline.

    For the ``stall`` fault (:mod:`engine.train.faults`). The wait happens
    when the consumer asks for element k, not when a prefetch would produce
    it: the map is the pipeline's last stage and nothing prefetches after
    it. The caller's own process keeps running meanwhile (the sleep releases
    the GIL).
    """

    def wait(index):
        seconds = delay_before(int(index))
        if seconds > 0:
            time.sleep(seconds)
        return True

    def delayed(index, element):
        waited = tf.py_function(wait, [index], tf.bool)
        with tf.control_dependencies([waited]):
            return tf.nest.map_structure(tf.identity, element)

    options = tf.data.Options()
    # tf.data would otherwise add a prefetch after a synchronous last map, running it early.
    options.experimental_optimization.inject_prefetch = False
    return dataset.enumerate().map(delayed).with_options(options)
