"""MobileNetV2 (Sandler et al., 2018) from keras.applications, with the zoo's logits head.

The network comes from ``keras.applications.MobileNetV2`` (width ``cfg.alpha``);
the head is global average pooling, ``cfg.dropout`` and a float32 Dense layer,
so the output is logits for any number of classes and any image size (at
224x224 with 1000 classes, Keras' own 3,538,984 parameters). With
``weights = "imagenet"`` the convolutions start from ImageNet training, and
Keras' own 1000-class classifier is kept only when it fits: ``include_top``,
1000 classes and a square 96-224 px RGB image. Otherwise (e.g. ``include_top =
true`` with 10 classes) the ImageNet features get a new head, as they would
with ``include_top = false``.

``weights`` may also be the path of a weights file for the network without
its classifier, or none (unset, or the string "none") to train from scratch.
ImageNet weights need 3-channel images; from scratch, 1 channel works as is.

With weights (or ``freeze_base``) the network is built for transfer learning
(engine.models.transfer): the images go through ``mobilenet_v2.preprocess_input``
and the network is one nested layer, the base, called in inference mode.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from engine.config import ConfigError, ModelConfig
from engine.models import transfer
from engine.models.common import image_input, logits_head, one_line
from engine.models.registry import input_preprocessing

IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
IMAGENET_CLASSES = 1000
# Where keras.applications fetches the weights from (keras 3, mobilenet_v2.py).
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """MobileNetV2 with a logits head; see the module docstring for weights and include_top."""
    weights = normalised_weights(cfg.weights)
    _check_weights(weights, cfg.alpha, input_shape)
    keep_keras_top = _keras_top_fits(weights, cfg.include_top, input_shape, num_classes)
    if weights is None and not cfg.freeze_base:
        # From scratch: one flat graph, as runs before transfer learning were built.
        inputs = image_input(input_shape)
        features = _keras_mobilenet(inputs, input_shape, cfg.alpha, weights, keep_keras_top)
        return keras.Model(inputs, _head(features, cfg, num_classes, keep_keras_top), name=_name(cfg))
    return _transfer_model(cfg, input_shape, num_classes, weights, keep_keras_top)


def _transfer_model(cfg: ModelConfig, input_shape, num_classes: int, weights, keep_keras_top: bool):
    """The base nested as one layer behind its preprocessing (engine.models.transfer)."""
    if cfg.freeze_base and keep_keras_top:
        raise ConfigError(
            "model.freeze_base: with include_top and 1000 classes Keras' own ImageNet classifier "
            "is kept, and freezing the base would leave nothing to train; set model.include_top = false"
        )
    inputs = image_input(input_shape)
    images = transfer.preprocessed(inputs, input_preprocessing(cfg))
    base = keras.Model(*_base_io(input_shape, cfg.alpha, weights, keep_keras_top), name=transfer.BASE_NAME)
    base.trainable = not cfg.freeze_base
    transfer.keep_batch_norm_frozen(base)
    features = base(images, training=False)  # the guide's call; see engine.models.transfer
    return keras.Model(inputs, _head(features, cfg, num_classes, keep_keras_top), name=_name(cfg))


def _base_io(input_shape, alpha: float, weights, keep_keras_top: bool):
    # A base of its own input, renamed: a fixed name is the handle freezing and fine-tuning use.
    base_inputs = keras.Input(shape=input_shape, name="base_image")
    return base_inputs, _keras_mobilenet(base_inputs, input_shape, alpha, weights, keep_keras_top)


def _head(features, cfg: ModelConfig, num_classes: int, keep_keras_top: bool):
    if keep_keras_top:
        # Keras' top computes in the policy's dtype; the cast keeps logits float32.
        return layers.Activation("linear", dtype="float32", name="logits")(features)
    return logits_head(features, num_classes, cfg.dropout)


def _name(cfg: ModelConfig) -> str:
    return f"mobilenetv2_{cfg.alpha:0.2f}"


def normalised_weights(weights: str | None) -> str | None:
    """None for "no weights": TOML has no null, so ``--set model.weights=none`` means it."""
    if weights is None or weights.strip().lower() in ("", "none", "null"):
        return None
    return weights


def _check_weights(weights: str | None, alpha: float, input_shape: tuple[int, int, int]) -> None:
    if weights is None:
        return
    if weights != "imagenet":
        if not os.path.exists(weights):
            raise ConfigError(
                f"model.weights: got {weights!r}; expected 'imagenet', none, "
                "or the path of an existing weights file"
            )
        return
    if alpha not in IMAGENET_ALPHAS:
        raise ConfigError(
            f"model.alpha: got {alpha}; ImageNet weights exist only for alpha in "
            f"{', '.join(map(str, IMAGENET_ALPHAS))} (or set model.weights to none)"
        )
    channels = input_shape[-1]
    if channels != 3:
        raise ConfigError(
            f"model.weights 'imagenet' needs 3-channel (RGB) images; got {channels} "
            f"channel{'s' if channels != 1 else ''} (set data.channels = 3, "
            'or model.weights = "none" to train from scratch)'
        )


def _keras_top_fits(weights, include_top: bool, input_shape, num_classes: int) -> bool:
    height, width, channels = input_shape
    return (
        weights == "imagenet"
        and include_top
        and num_classes == IMAGENET_CLASSES
        and height == width
        and height in IMAGENET_SIZES
    )


def _keras_mobilenet(inputs, input_shape, alpha: float, weights, keep_keras_top: bool):
    arguments = dict(
        input_tensor=inputs,
        input_shape=input_shape,
        alpha=alpha,
        weights=weights,
        include_top=keep_keras_top,
        pooling=None if keep_keras_top else "avg",
        classifier_activation=None,
    )
    try:
        return keras.applications.MobileNetV2(**arguments).output
    except Exception as error:  # keras raises a bare Exception for a failed download
        if weights is None:
            raise  # nothing to fetch or load: a bug, not a config mistake
        raise _weights_error(error, weights, alpha, input_shape, keep_keras_top) from error


def _weights_error(error, weights, alpha, input_shape, keep_keras_top) -> ConfigError:
    # Keras says "URL fetch failure on <url>: <code> -- <reason>"; the URL is given below.
    reason = one_line(error, limit=1000).rpartition(" -- ")[2][:200]
    if weights != "imagenet":
        return ConfigError(f"model.weights: cannot load {weights!r} into MobileNetV2: {reason}")
    file_name = imagenet_weights_file(alpha, input_shape, keep_keras_top)
    cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
    return ConfigError(
        f"model.weights 'imagenet': cannot get the MobileNetV2 weights ({reason}); "
        f"download {WEIGHTS_URL}{file_name} into {cache}/ on a machine with internet, "
        f'set model.weights to the path of a copy of that file, or model.weights = "none" to '
        "train from scratch"
    )


def imagenet_weights_file(alpha: float, input_shape, keep_keras_top: bool) -> str:
    """The file name keras.applications looks for in ``~/.keras/models`` (keras 3)."""
    height, width = input_shape[:2]
    # Keras falls back to the 224 weights for other sizes (the convolutions fit any size).
    rows = height if height == width and height in IMAGENET_SIZES else 224
    suffix = "" if keep_keras_top else "_no_top"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{suffix}.h5"
