"""The model zoo: every family builds, emits float32 logits, trains, and refuses bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine.config import ConfigError, ModelConfig
from engine.models import build_model, min_input_size
from engine.models.registry import FAMILIES, SMALL_IMAGE_MAX
from engine.models.resnet import build_resnet
from engine.models.transfer import base_of

TESTS_DIR = Path(__file__).parent


def cfg(**fields) -> ModelConfig:
    return ModelConfig(**fields)


def trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def as_list(outputs):
    return outputs if isinstance(outputs, (list, tuple)) else [outputs]


FALLS_TO = 0.75
"""Trains: the mean of the last 3 losses on one fixed batch is below 75% of the first.

Single steps are noisy (Adam's first updates move every weight by about the
rate whatever its gradient, BatchNorm over 4 images, dropout), so one step
may go up: the loss after 3 steps was above the first in a run that trained
well. Over seeds 0-6 (0-9 for AlexNet, DenseNet and the user's model),
every case below ends at 0.00-0.54 of its first loss; a network that does
not learn stays near 1.
"""


def train_losses(model, input_shape, num_classes, learning_rate, steps, batch=4):
    """Losses of Adam steps on one fixed batch (aux outputs weighted 0.3).

    Each class has its own brightness on top of the noise, so even a network
    that pools everything early (the user's tiny one) can tell them apart.
    """
    keras.utils.set_random_seed(0)
    labels = np.arange(batch) % num_classes
    images = np.random.default_rng(0).normal(size=(batch, *input_shape)).astype("float32")
    images += (labels - labels.mean()).reshape(-1, 1, 1, 1).astype("float32")
    optimizer = keras.optimizers.Adam(learning_rate)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            outputs = as_list(model(images, training=True))
            weights = [1.0] + [0.3] * (len(outputs) - 1)
            loss = sum(w * loss_fn(labels, out) for w, out in zip(weights, outputs, strict=True))
        gradients = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(gradients, model.trainable_weights, strict=True))
        losses.append(float(loss))
    return losses


@pytest.fixture(autouse=True)
def seeded():
    # Weight initialisation happens at build time: seed before every build.
    keras.utils.set_random_seed(0)


@pytest.fixture
def user_models_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))


class TrainCase(NamedTuple):
    fields: dict
    input_shape: tuple[int, int, int]
    num_classes: int
    name: str
    learning_rate: float = 1e-3
    steps: int = 10


# Small variants of each family: fast on a CPU, same code paths as the big ones.
TRAIN_CASES = {
    "lenet5-28": TrainCase(dict(arch="lenet5"), (28, 28, 1), 10, "lenet5"),
    "lenet5-32-dropout": TrainCase(dict(arch="lenet5", dropout=0.2), (32, 32, 1), 10, "lenet5"),
    # No BatchNorm, and two dropout layers (0.5) over 4 images make its loss jump
    # from step to step: a slow rate and 20 steps.
    "alexnet-small": TrainCase(dict(arch="alexnet"), (32, 32, 3), 10, "alexnet_small", 1e-4, 20),
    "vgg11-bn": TrainCase(dict(arch="vgg", depth=11), (32, 32, 3), 10, "vgg11_bn"),
    # Learns the batch within 3 steps; each step costs more than any other case's.
    "googlenet-aux": TrainCase(
        dict(arch="googlenet", aux_heads=True), (32, 32, 3), 5, "googlenet_small", steps=6
    ),
    "resnet-basic": TrainCase(dict(arch="resnet", blocks=[1, 1]), (32, 32, 1), 10, "resnet6"),
    "resnet-bottleneck": TrainCase(
        dict(arch="resnet", blocks=[1, 1], block_type="bottleneck"), (32, 32, 3), 10, "resnet8"
    ),
    # Tiny (growth 8): learns steadily but slowly, so 15 steps.
    "densenet": TrainCase(
        dict(arch="densenet", growth_rate=8, block_config=[2, 2]), (32, 32, 3), 10, "densenet11_k8", steps=15
    ),
    "mobilenetv2-1ch": TrainCase(dict(arch="mobilenetv2", alpha=0.35), (32, 32, 1), 10, "mobilenetv2_0.35"),
    # Four filters pooled to four numbers: learns slowly at 1e-3, so 1e-2 and 15 steps.
    "user": TrainCase(
        dict(arch="user_models:tiny_cnn", kwargs={"width": 4}), (32, 32, 3), 3, "tiny_cnn", 1e-2, 15
    ),
}


@pytest.mark.parametrize("case", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_every_family_emits_float32_logits_and_trains(case, user_models_importable):
    model = build_model(cfg(**case.fields), case.input_shape, case.num_classes)
    assert model.name == case.name
    for output in as_list(model(np.zeros((2, *case.input_shape), "float32"))):
        assert tuple(output.shape) == (2, case.num_classes)
        assert output.dtype == tf.float32
    losses = train_losses(model, case.input_shape, case.num_classes, case.learning_rate, case.steps)
    assert np.mean(losses[-3:]) < FALLS_TO * losses[0], losses


# Default configs build at CIFAR size, with readable names (symbolic shapes only).
DEFAULT_CASES = {
    "lenet5": "lenet5",
    "alexnet": "alexnet_small",
    "vgg": "vgg16_bn",
    "googlenet": "googlenet_small",
    "resnet": "resnet18",
    "densenet": "densenet121",
    "mobilenetv2": "mobilenetv2_1.00",
}


@pytest.mark.parametrize("arch", DEFAULT_CASES)
def test_default_config_builds_at_cifar_size(arch):
    model = build_model(cfg(arch=arch), (32, 32, 3), 10)
    assert model.name == DEFAULT_CASES[arch]
    assert [tuple(output.shape) for output in model.outputs] == [(None, 10)]


class Published(NamedTuple):
    """A network as published, and its parameter counts.

    ``trainable`` leaves BatchNorm's moving statistics out, as torchvision's
    counts do (buffers there, not parameters); ``total`` is ``count_params()``,
    as keras.applications counts. ``about``: a figure the paper rounds, which
    the trainable count must be within 5% of.
    """

    fields: dict
    trainable: int | None = None
    total: int | None = None
    about: int | None = None
    input_shape: tuple[int, int, int] = (224, 224, 3)
    num_classes: int = 1000


# Every family against its published counts: ImageNet scale (224x224x3, 1000
# classes, ImageNet stems), LeNet-5 at its 32x32x1 with 10 classes.
PUBLISHED_COUNTS = {
    # Valid convolutions on 32x32: the count usually quoted for LeNet-5.
    "lenet5": Published(dict(arch="lenet5"), 61_706, 61_706, input_shape=(32, 32, 1), num_classes=10),
    # MNIST's 28x28, padded to 32x32 as the paper did: the same network.
    "lenet5-28": Published(dict(arch="lenet5"), 61_706, 61_706, input_shape=(28, 28, 1), num_classes=10),
    # torchvision's single-tower widths (64, 192, 384, 256, 256).
    "alexnet": Published(dict(arch="alexnet", stem="imagenet"), 61_100_840, 61_100_840),
    "vgg16": Published(dict(arch="vgg", depth=16, batch_norm=False, stem="imagenet"), 138_357_544, 138_357_544),
    # The paper's "about 6.8M". Exactly: torchvision's 6,624,904 (whose 5x5 branch
    # is a 3x3) plus the true 5x5's 16 * sum(5x5 reduce * 5x5) = 380,928 ...
    "googlenet": Published(dict(arch="googlenet", stem="imagenet"), 6_624_904 + 380_928, about=6_800_000),
    # ... and the two auxiliary heads torchvision's 6,379,984.
    "googlenet-aux": Published(
        dict(arch="googlenet", stem="imagenet", aux_heads=True), 6_624_904 + 380_928 + 6_379_984
    ),
    "resnet18": Published(dict(arch="resnet", blocks=[2, 2, 2, 2], stem="imagenet"), 11_689_512),
    "resnet34": Published(dict(arch="resnet", blocks=[3, 4, 6, 3], stem="imagenet"), 21_797_672),
    "resnet50": Published(
        dict(arch="resnet", blocks=[3, 4, 6, 3], block_type="bottleneck", stem="imagenet"), 25_557_032
    ),
    "densenet121": Published(dict(arch="densenet", stem="imagenet"), 7_978_856, 8_062_504),
    "mobilenetv2": Published(dict(arch="mobilenetv2"), 3_504_872, 3_538_984),
}


@pytest.mark.parametrize("published", PUBLISHED_COUNTS.values(), ids=PUBLISHED_COUNTS.keys())
def test_parameter_counts_are_the_published_ones(published):
    model = build_model(cfg(**published.fields), published.input_shape, published.num_classes)
    counts = {"trainable": trainable_params(model), "total": model.count_params()}
    expected = {"trainable": published.trainable, "total": published.total}
    assert {k: v for k, v in counts.items() if expected[k] is not None} == {
        k: v for k, v in expected.items() if v is not None
    }
    if published.about is not None:
        assert counts["trainable"] == pytest.approx(published.about, rel=0.05)
    assert tuple(as_list(model.outputs)[0].shape) == (None, published.num_classes)


def test_lenet5_uses_valid_convolutions_on_32x32():
    model = build_model(cfg(arch="lenet5"), (28, 28, 1), 10)
    assert model.get_layer("pad").output.shape[1:3] == (32, 32)
    assert model.get_layer("conv1").output.shape[1:] == (28, 28, 6)
    assert model.get_layer("pool2").output.shape[1:] == (5, 5, 16)
    unpadded = build_model(cfg(arch="lenet5"), (32, 32, 1), 10)
    assert "pad" not in [layer.name for layer in unpadded.layers]


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "fields",
    [
        dict(arch="resnet", blocks=[1, 1]),
        dict(arch="googlenet", aux_heads=True),
        dict(arch="mobilenetv2", alpha=0.35),
        dict(arch="vgg", depth=11, batch_norm=False),
    ],
    ids=["resnet", "googlenet-aux", "mobilenetv2", "vgg"],
)
def test_logits_stay_float32_under_mixed_precision(fields, mixed_precision):
    model = build_model(cfg(**fields), (32, 32, 3), 10)
    assert all(output.dtype == "float32" for output in model.outputs)
    assert any(layer.compute_dtype == "float16" for layer in model.layers)


# --- minimum sizes -------------------------------------------------------------

EXPECTED_MIN_SIZES = {
    "lenet5": 28,
    "alexnet": 32,
    "vgg": 32,
    "googlenet": 32,
    "resnet": 32,
    "densenet": 32,
    "mobilenetv2": 32,
}


def test_min_input_sizes():
    assert {arch: min_input_size(cfg(arch=arch)) for arch in FAMILIES} == EXPECTED_MIN_SIZES
    assert min_input_size(cfg(arch="alexnet", stem="imagenet")) == 63
    assert min_input_size(cfg(arch="googlenet", stem="imagenet", aux_heads=True)) == 65
    assert min_input_size(cfg(arch="densenet", block_config=[2, 2, 2, 2, 2, 2, 2])) == 64
    assert min_input_size(cfg(arch="user_models:tiny_cnn")) == 1


def test_auto_stem_never_picks_a_variant_too_big_for_the_image():
    # "auto" answers with the small variant's minimum; that is only sound if
    # every ImageNet variant fits the smallest image "auto" gives it.
    for arch in FAMILIES:
        assert min_input_size(cfg(arch=arch, stem="imagenet")) <= SMALL_IMAGE_MAX + 1


# The smallest accepted image really runs (small widths where the family has them).
AT_MIN_CASES = {
    "lenet5": dict(arch="lenet5"),
    "alexnet": dict(arch="alexnet"),
    "alexnet-imagenet": dict(arch="alexnet", stem="imagenet"),
    "vgg": dict(arch="vgg", depth=11),
    "googlenet-imagenet-aux": dict(arch="googlenet", stem="imagenet", aux_heads=True),
    "resnet-imagenet": dict(arch="resnet", blocks=[1, 1, 1, 1], stem="imagenet"),
    "densenet-imagenet": dict(
        arch="densenet", growth_rate=4, block_config=[1, 1, 1, 1], stem="imagenet"
    ),
    "mobilenetv2": dict(arch="mobilenetv2", alpha=0.35),
}


@pytest.mark.parametrize("fields", AT_MIN_CASES.values(), ids=AT_MIN_CASES.keys())
def test_smallest_accepted_image_runs_and_one_less_is_refused(fields):
    config = cfg(**fields)
    size = min_input_size(config)
    model = build_model(config, (size, size, 3), 4)
    for output in as_list(model(np.zeros((1, size, size, 3), "float32"))):
        assert tuple(output.shape) == (1, 4)
    with pytest.raises(ConfigError, match=f"at least {size}x{size}"):
        build_model(config, (size - 1, size, 3), 4)


def test_too_small_image_says_what_to_set():
    with pytest.raises(ConfigError) as error:
        build_model(cfg(arch="vgg"), (8, 8, 1), 10)
    assert str(error.value) == (
        "model.arch 'vgg' needs images of at least 32x32; got 8x8 (set data.image_size = [32, 32])"
    )


def test_auto_stem_checks_the_variant_it_picks():
    # Seven blocks: the ImageNet stem plus six transitions need 256 px.
    config = cfg(arch="densenet", growth_rate=4, block_config=[1] * 7)
    with pytest.raises(ConfigError, match=r"at least 256x256; got 100x100 .*model.stem = 'small'"):
        build_model(config, (100, 100, 3), 10)


def test_numpy_integers_are_fine_for_shape_and_classes():
    model = build_model(cfg(arch="lenet5"), tuple(np.array([28, 28, 1])), np.int64(10))
    assert tuple(model.outputs[0].shape) == (None, 10)


def test_auto_stem_switches_above_64_pixels():
    def has_stem_pool(size):
        model = build_model(cfg(arch="resnet", blocks=[1]), (size, size, 3), 10)
        return any(layer.name == "stem_pool" for layer in model.layers)

    assert not has_stem_pool(SMALL_IMAGE_MAX)
    assert has_stem_pool(SMALL_IMAGE_MAX + 1)


def test_min_input_size_does_not_import_tensorflow():
    code = (
        "import sys; from engine.config import ModelConfig; "
        "from engine.models import min_input_size; "
        "assert min_input_size(ModelConfig(arch='vgg')) == 32; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=TESTS_DIR.parent)


# --- bad arguments ---------------------------------------------------------------


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown architecture 'squeezenet'"):
        build_model(ModelConfig.model_construct(arch="squeezenet"), (32, 32, 3), 10)


@pytest.mark.parametrize(
    ("input_shape", "num_classes", "message"),
    [
        ((32, 32), 10, "input shape: got"),
        ((32, None, 3), 10, "input shape: got"),
        ((32, 32, 3), 1, "data.num_classes: got 1"),
        ((32, 32, 3), 2.5, "data.num_classes: got 2.5"),
    ],
)
def test_bad_shape_or_classes_is_a_config_error(input_shape, num_classes, message):
    with pytest.raises(ConfigError, match=message):
        build_model(cfg(arch="lenet5"), input_shape, num_classes)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(blocks=[]), r"model.blocks: got \[\]"),
        (dict(blocks=[2, 0]), r"model.blocks: got \[2, 0\]"),
        (dict(blocks=[2], block_type="wide"), "model.block_type: got 'wide'"),
        (dict(blocks=[2], stem="huge"), "stem: got 'huge'"),
    ],
)
def test_build_resnet_checks_arguments_first(arguments, message):
    with pytest.raises(ConfigError, match=message):
        build_resnet((32, 32, 3), 10, **arguments)


# --- MobileNetV2 weights -----------------------------------------------------------


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, no cached weights: keras' download fails at once, as it does here."""

    def refuse(fname=None, origin=None, **_):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # mobilenet_v2.py calls file_utils.get_file (keras.utils.get_file is the same function).
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", refuse)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_imagenet_weights_offline_says_how_to_proceed(offline, tmp_path):
    config = cfg(arch="mobilenetv2", weights="imagenet", alpha=0.35)
    with pytest.raises(ConfigError) as error:
        build_model(config, (32, 32, 3), 10)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot get the MobileNetV2 weights ([Errno -2] Name or service)" in message
    assert 'model.weights = "none"' in message
    assert "set model.weights to the path of a copy of that file" in message
    weights_file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    assert f"{weights_file} into {tmp_path}/models/ " in message


def test_imagenet_top_is_kept_only_for_1000_classes_at_a_keras_size(offline):
    config = cfg(arch="mobilenetv2", weights="imagenet", alpha=0.35)
    with pytest.raises(ConfigError, match=r"kernels_0\.35_96\.h5"):
        build_model(config, (96, 96, 3), 1000)
    with pytest.raises(ConfigError, match=r"kernels_0\.35_96_no_top\.h5"):
        build_model(config, (96, 96, 3), 10)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
@pytest.mark.parametrize(
    ("size", "num_classes", "keras_top"), [(32, 10, False), (96, 1000, True)], ids=["own", "keras"]
)
def test_imagenet_weights_load_from_the_cache(size, num_classes, keras_top, monkeypatch, tmp_path):
    # Stand-in for the downloaded file: weights of the same network Keras builds.
    reference = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=0.35,
        weights=None,
        include_top=keras_top,
        pooling=None if keras_top else "avg",
    )
    saved = tmp_path / "mobilenetv2.weights.h5"
    reference.save_weights(saved)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *a, **k: str(saved))
    config = cfg(arch="mobilenetv2", weights="imagenet", alpha=0.35, include_top=True)
    model = build_model(config, (size, size, 3), num_classes)
    assert tuple(model.outputs[0].shape) == (None, num_classes)
    assert model.outputs[0].dtype == "float32"
    base = base_of(model)  # pretrained weights: the keras network is one nested layer
    assert any(layer.name == "predictions" for layer in base.layers) == keras_top
    for name in ("Conv1", "Conv_1"):
        loaded, expected = base.get_layer(name), reference.get_layer(name)
        np.testing.assert_array_equal(loaded.get_weights()[0], expected.get_weights()[0])


@pytest.mark.parametrize(
    ("fields", "input_shape", "message"),
    [
        (dict(weights="imagenet"), (32, 32, 1), "needs 3-channel .* got 1 channel "),
        (dict(weights="imagenet", alpha=0.6), (32, 32, 3), "model.alpha: got 0.6"),
        (dict(weights="no/such/file.h5"), (32, 32, 3), "model.weights: got 'no/such/file.h5'"),
    ],
)
def test_mobilenetv2_weights_mistakes(fields, input_shape, message):
    with pytest.raises(ConfigError, match=message):
        build_model(cfg(arch="mobilenetv2", **fields), input_shape, 10)


def test_mobilenetv2_weights_none_string_and_no_top():
    config = cfg(arch="mobilenetv2", alpha=0.35, weights="none", include_top=False)
    model = build_model(config, (32, 32, 3), 10)
    assert tuple(model.outputs[0].shape) == (None, 10)


# --- user models ---------------------------------------------------------------------


def test_subclassed_user_model_is_checked_by_running_it(user_models_importable):
    model = build_model(cfg(arch="user_models:subclassed"), (32, 32, 3), 10)
    assert model.name == "subclassed"


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("no_such_module_xyz:build", {}, "cannot import 'no_such_module_xyz': No module named"),
        ("user_models:missing", {}, "module 'user_models' has no 'missing'"),
        ("user_models:NOT_CALLABLE", {}, "'NOT_CALLABLE' is a int, not a function"),
        ("user_models:returns_a_list", {}, "the builder returned list; expected a keras.Model"),
        ("user_models:wrong_width", {}, r"outputs \[None, 11\]; expected logits \[batch, 10\]"),
        ("user_models:fixed_input", {}, r"takes images of shape \[28, 28, 1\]"),
        ("user_models:raises", {}, "the builder raised RuntimeError: boom$"),
        ("user_models:tiny_cnn", {"depth": 3}, "raised TypeError: .*'depth'"),
        (":tiny_cnn", {}, "expected 'package.module:function'"),
    ],
)
def test_user_model_mistakes_are_one_line(arch, kwargs, message, user_models_importable):
    with pytest.raises(ConfigError, match=message) as error:
        build_model(cfg(arch=arch, kwargs=kwargs), (32, 32, 3), 10)
    assert "\n" not in str(error.value)
