"""scikit-learn's 1,797 handwritten 8x8 digits: real data that needs no download."""

from __future__ import annotations

import numpy as np

from engine.config import DataConfig
from engine.datasets.images import match_channels, resize
from engine.datasets.sources import RawData, TensorSource, on_host

NUM_CLASSES = 10
# load_digits() pixel values run 0..16.
MAX_PIXEL = 16.0


def open_digits(config: DataConfig) -> RawData:
    """Resize every digit once, split them (stratified, seeded) and hold both in memory."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = prepare_images(digits.images, config)
    labels = digits.target.astype(np.int32)
    train_index, val_index = split_indices(labels, config.validation_split, config.seed)
    val = TensorSource(images[val_index], labels[val_index]) if len(val_index) else None
    return RawData(
        name="digits",
        train=TensorSource(images[train_index], labels[train_index]),
        val=val,
        num_classes=NUM_CLASSES,
        input_shape=(*config.image_size, images.shape[-1]),
    )


@on_host
def prepare_images(images: np.ndarray, config: DataConfig) -> np.ndarray:
    scaled = (images.astype(np.float32) / MAX_PIXEL)[..., None]
    resized = resize(scaled, config.image_size, config.resize_method)
    channels = config.channels or 1
    return match_channels(resized, 1, channels, "digits").numpy()


def split_indices(
    labels: np.ndarray, validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices, stratified by class, fixed by ``seed``."""
    everything = np.arange(len(labels))
    if validation_split <= 0:
        return everything, everything[:0]
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(
        everything, test_size=validation_split, stratify=labels, random_state=seed % 2**32
    )
    return np.sort(train), np.sort(val)
