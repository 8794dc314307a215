"""A folder of images with one subfolder per class: ``PATH/<class_name>/<image files>``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import tensorflow as tf

from engine.config import ConfigError, DataConfig
from engine.datasets import first_line
from engine.datasets.bad_images import bad_image_message, skipped_message, undecodable
from engine.datasets.folder_layout import check_layout, folder_root
from engine.datasets.images import resize, to_unit_range
from engine.datasets.sources import IndexedSource, RawData, on_host

COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
DEFAULT_CHANNELS = 3


def open_folder(config: DataConfig) -> RawData:
    """Index and split the folder with Keras, check that every file decodes, then load on demand."""
    root = folder_root(config.dataset)
    check_layout(root, config.dataset)
    channels = config.channels or DEFAULT_CHANNELS
    if channels not in COLOR_MODES:
        raise ConfigError(
            f"data.channels: folder images can have 1, 3 or 4 channels, got {channels}"
        )
    train_paths, val_paths, class_names = index_folder(root, config, channels)
    decode = image_decoder(channels)
    bad = sorted(undecodable(train_paths + val_paths, decode))
    if bad and not config.skip_bad_images:
        raise ConfigError(bad_image_message(config.dataset, bad, decode))
    # Left out after the seeded split, so the other files keep their side of it.
    train_paths, val_paths = without(train_paths, bad), without(val_paths, bad)
    warnings = [skipped_message(config.dataset, root, bad)] if bad else []
    load_image = image_loader(config, decode, channels)
    train = path_source(train_paths, root, class_names, load_image)
    val = path_source(val_paths, root, class_names, load_image) if val_paths else None
    return RawData(
        name=config.dataset,
        train=train,
        val=val,
        num_classes=len(class_names),
        input_shape=(*config.image_size, channels),
        warnings=warnings,
    )


def index_folder(
    root: Path, config: DataConfig, channels: int
) -> tuple[list[str], list[str], list[str]]:
    """Train and val file paths, split by Keras with ``data.seed``, and the class names."""
    from keras.utils import image_dataset_from_directory

    split = config.validation_split or None
    try:
        # Keras prints its split counts to stdout whatever ``verbose`` says.
        with contextlib.redirect_stdout(io.StringIO()):
            result = image_dataset_from_directory(
                str(root),
                labels="inferred",
                label_mode="int",
                color_mode=COLOR_MODES[channels],
                batch_size=None,
                image_size=tuple(config.image_size),
                shuffle=True,
                seed=config.seed % 2**32,
                validation_split=split,
                subset="both" if split else None,
                interpolation=config.resize_method,
                verbose=False,
            )
    except ValueError as error:
        # E.g. too few images to split data.validation_split of them off.
        raise ConfigError(
            f"{config.dataset}: {first_line(error)} (data.validation_split={split})"
        ) from None
    train, val = result if split else (result, None)
    # Keras's own dataset reshuffles on every pass, which would break an exact
    # resume; only its seeded file split is used, and loading is done here.
    return list(train.file_paths), list(val.file_paths) if val else [], train.class_names


def path_source(paths: list[str], root: Path, class_names: list[str], load_image) -> IndexedSource:
    class_index = {name: index for index, name in enumerate(class_names)}
    labels = [class_index[Path(path).relative_to(root).parts[0]] for path in paths]
    path_tensor, label_tensor = host_constants(paths, labels)

    def load_example(index):
        return load_image(tf.gather(path_tensor, index)), tf.gather(label_tensor, index)

    return IndexedSource(len(paths), load_example)


@on_host
def host_constants(paths: list[str], labels: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.constant(paths, tf.string), tf.constant(np.asarray(labels, np.int32))


def without(paths: list[str], left_out: list[str]) -> list[str]:
    if not left_out:
        return paths
    dropped = set(left_out)
    return [path for path in paths if path not in dropped]


def image_decoder(channels: int):
    """Read and decode one file as Keras does: ``decode_image``, first frame of a GIF."""

    def decode(path: tf.Tensor) -> tf.Tensor:
        encoded = tf.io.read_file(path)
        return tf.io.decode_image(encoded, channels=channels, expand_animations=False)

    return decode


def image_loader(config: DataConfig, decode, channels: int):
    """Decode, scale to [0, 1] and ``resize`` to the configured size."""

    def load_image(path: tf.Tensor) -> tf.Tensor:
        image = to_unit_range(decode(path))
        image.set_shape([None, None, channels])
        return resize(image, config.image_size, config.resize_method)

    return load_image
