"""Transfer learning's model parts: the family's input preprocessing, the base, the fresh head.

The model is built as Keras' transfer-learning guide builds it::

    image [0, 1] -> ApplicationsPreprocess -> base(training=False) -> pooling -> Dense

The base is the keras.applications network, nested as one layer named
``BASE_NAME`` so that freezing and unfreezing it (``model.freeze_base``, the
fine-tune stage) has one handle. Its BatchNorm layers stay in inference mode
even once the base is unfrozen, as the guide advises: their moving statistics,
learnt on ImageNet, are not overwritten by a few small batches. The guide's
``base(x, training=False)`` alone does not do it in Keras 3 (a functional
model hands its own ``training`` to every layer it calls), so the BatchNorm
layers are also kept non-trainable, which Keras 3 runs in inference mode.
"""

from __future__ import annotations

import keras

from engine.models.registry import KerasBase

BASE_NAME = "base"


@keras.saving.register_keras_serializable(package="convdeck")
class ApplicationsPreprocess(keras.layers.Layer):
    """``keras.applications.<module>.preprocess_input`` on images in [0, 1].

    convdeck's datasets give images in [0, 1]; ``preprocess_input`` expects
    0..255, so they are scaled first. A layer (not a map in the data pipeline)
    so an exported model takes the same [0, 1] images as the run did.
    """

    def __init__(self, module: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.module = module
        self._preprocess = getattr(keras.applications, module).preprocess_input

    def call(self, images):
        return self._preprocess(images * 255.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "module": self.module}


def preprocessed(images: keras.KerasTensor, keras_base: KerasBase | None) -> keras.KerasTensor:
    """``images`` through the base's ``preprocess_input`` (None: as they are, standardised)."""
    if keras_base is None:
        return images
    return ApplicationsPreprocess(keras_base.module, name="preprocess")(images)


def keep_batch_norm_frozen(base: keras.Model) -> None:
    """Set the base's BatchNorm layers non-trainable: inference mode, whatever else trains."""
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def base_of(model: keras.Model) -> keras.Model | None:
    """The nested keras.applications base of a transfer model; None for any other model."""
    try:
        layer = model.get_layer(BASE_NAME)
    except ValueError:
        return None
    return layer if isinstance(layer, keras.Model) else None
