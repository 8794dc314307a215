"""TensorFlow Datasets (``tfds:NAME``): prepared on disk, or downloaded when possible."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from engine.config import ConfigError, DataConfig
from engine.datasets import first_line, network
from engine.datasets.images import match_channels, resize, to_unit_range
from engine.datasets.sources import RawData, StreamSource
from engine.datasets.tfds_catalog import not_prepared_message as catalog_not_prepared_message
from engine.datasets.tfds_catalog import unknown_dataset_message


def open_tfds(config: DataConfig) -> RawData:
    """Open NAME's train and validation splits as streams of unnormalised images."""
    name = config.dataset.partition(":")[2]
    builder = make_builder(name, config)
    ensure_prepared(builder, config)
    image_key, label_key = feature_keys(builder, config)
    num_classes = label_classes(builder, label_key, config)
    channels = config.channels or checked_image_feature(builder, image_key, config).shape[-1] or 3
    train_split, val_split = split_names(config)

    def open_split(split: str) -> StreamSource:
        records = read_records(builder, split, image_key, config)
        prepare = example_preparer(builder, (image_key, label_key), config, channels)
        return StreamSource(
            records, prepare, split_size(builder, split, records), config.shuffle_buffer
        )

    return RawData(
        name=config.dataset,
        train=open_split(train_split),
        val=open_split(val_split) if val_split else None,
        num_classes=num_classes,
        input_shape=(*config.image_size, channels),
    )


def make_builder(name: str, config: DataConfig):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=config.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(unknown_dataset_message(config.dataset, tfds.list_builders())) from None
    except Exception as error:  # a broken or unsupported builder: still the user's dataset
        raise ConfigError(f"dataset {config.dataset}: {first_line(error)}") from None


def ensure_prepared(builder, config: DataConfig) -> None:
    """Download and prepare NAME if needed, or say in one line why it cannot be."""
    if builder.is_prepared() or tfds_is_mocked():
        return
    reason = network.unreachable_reason()
    if reason:
        raise ConfigError(not_prepared_message(builder, config, reason))
    try:
        builder.download_and_prepare()
    except ModuleNotFoundError as error:
        # tensorflow-datasets 4.9.x needs importlib_resources here but does not
        # declare it for Python >= 3.9 (tensorflow/datasets#11212).
        raise ConfigError(
            f"dataset {config.dataset}: downloading needs the Python package "
            f"{error.name!r}, which is not installed; run: pip install {error.name}"
        ) from None
    except Exception as error:  # network, checksums, manual-download instructions
        raise ConfigError(not_prepared_message(builder, config, first_line(error))) from None


def tfds_is_mocked() -> bool:
    """True inside ``tfds.testing.mock_data``, where preparing is a no-op that needs no network."""
    import tensorflow_datasets as tfds

    prepare = tfds.core.DatasetBuilder.download_and_prepare
    return getattr(prepare, "__name__", "") == "mock_download_and_prepare"


def not_prepared_message(builder, config: DataConfig, reason: str) -> str:
    return catalog_not_prepared_message(config.dataset, builder.name, builder.data_dir_root, reason)


def feature_keys(builder, config: DataConfig) -> tuple[str, str]:
    """The image and label features: the supervised keys when asked for and declared."""
    if config.as_supervised and builder.info.supervised_keys:
        image_key, label_key = builder.info.supervised_keys[:2]
        if isinstance(image_key, str) and isinstance(label_key, str):
            return image_key, label_key
    return "image", "label"


def label_classes(builder, label_key: str, config: DataConfig) -> int:
    features = builder.info.features
    label = features[label_key] if label_key in features else None
    if not hasattr(label, "num_classes"):
        raise ConfigError(
            f"dataset {config.dataset}: no class label feature {label_key!r} "
            f"(features: {', '.join(features)}); it is not an image classification set"
        )
    return int(label.num_classes)


def checked_image_feature(builder, image_key: str, config: DataConfig):
    features = builder.info.features
    if image_key not in features or len(features[image_key].shape or ()) != 3:
        raise ConfigError(
            f"dataset {config.dataset}: no image feature {image_key!r} of shape [H, W, C] "
            f"(features: {', '.join(features)})"
        )
    return features[image_key]


def split_names(config: DataConfig) -> tuple[str, Optional[str]]:
    """``val_split`` as given, or the last ``validation_split`` of the train split."""
    if config.val_split:
        return config.train_split, config.val_split
    if not config.validation_split:
        return config.train_split, None
    keep = round((1 - config.validation_split) * 100)
    return f"{config.train_split}[:{keep}%]", f"{config.train_split}[{keep}%:]"


def read_records(builder, split: str, image_key: str, config: DataConfig) -> tf.data.Dataset:
    """The split's records as feature dicts, in the same order on every read.

    Images stay encoded until after the shuffle buffer: a buffer of 10,000
    ImageNet JPEGs holds about 1 GB, decoded it would hold about 4.
    """
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={image_key: tfds.decode.SkipDecoding()},
        )
    except (ValueError, KeyError) as error:
        raise ConfigError(
            f"dataset {config.dataset}: split {split!r}: {first_line(error)}"
        ) from None


def example_preparer(builder, keys: tuple[str, str], config: DataConfig, channels: int):
    """Record -> ``(image in [0, 1] at the configured size and channels, int32 label)``."""
    image_key, label_key = keys
    feature = builder.info.features[image_key]
    source_channels = feature.shape[-1] or 3

    def prepare(record):
        image = to_unit_range(feature.decode_example(record[image_key]))
        image = resize(image, config.image_size, config.resize_method)
        image = match_channels(image, source_channels, channels, config.dataset)
        return image, tf.cast(record[label_key], tf.int32)

    return prepare


def split_size(builder, split: str, records: tf.data.Dataset) -> int:
    """Examples in a split: from the dataset, else its metadata, else by counting."""
    cardinality = int(records.cardinality())
    if cardinality >= 0:
        return cardinality
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        return int(records.reduce(0, lambda count, _: count + 1))
