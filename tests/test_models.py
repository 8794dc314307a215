"""The model zoo: every family builds, emits float32 logits, trains, and refuses bad input."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine.config import ConfigError, ModelConfig
from engine.models import build_model, min_input_size
from engine.models.registry import FAMILIES, SMALL_IMAGE_MAX
from engine.models.resnet import build_resnet

TESTS_DIR = Path(__file__).parent


def cfg(**fields) -> ModelConfig:
    return ModelConfig(**fields)


def trainable_params(model: keras.Model) -> int:
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def as_list(outputs):
    return outputs if isinstance(outputs, (list, tuple)) else [outputs]


# lr 3e-4: AlexNet (no BatchNorm, two dropout layers) overshoots at 1e-3 on
# a 4-image batch often enough to make this check flaky; BN nets don't care.
def train_losses(model, input_shape, num_classes, steps=3, batch=4, learning_rate=3e-4):
    """Losses of a few Adam steps on one fixed batch (aux outputs weighted 0.3)."""
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(batch, *input_shape)).astype("float32")
    labels = np.arange(batch) % num_classes
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


# Small variants of each family: fast on a CPU, same code paths as the big ones.
TRAIN_CASES = {
    "lenet5-28": (dict(arch="lenet5"), (28, 28, 1), 10, "lenet5"),
    "lenet5-32-dropout": (dict(arch="lenet5", dropout=0.2), (32, 32, 1), 10, "lenet5"),
    "alexnet-small": (dict(arch="alexnet"), (32, 32, 3), 10, "alexnet_small"),
    "vgg11-bn": (dict(arch="vgg", depth=11), (32, 32, 3), 10, "vgg11_bn"),
    "googlenet-aux": (dict(arch="googlenet", aux_heads=True), (32, 32, 3), 5, "googlenet_small"),
    "resnet-basic": (dict(arch="resnet", blocks=[1, 1]), (32, 32, 1), 10, "resnet6"),
    "resnet-bottleneck": (
        dict(arch="resnet", blocks=[1, 1], block_type="bottleneck"),
        (32, 32, 3),
        10,
        "resnet8",
    ),
    "densenet": (
        dict(arch="densenet", growth_rate=8, block_config=[2, 2]),
        (32, 32, 3),
        10,
        "densenet11_k8",
    ),
    "mobilenetv2-1ch": (dict(arch="mobilenetv2", alpha=0.35), (32, 32, 1), 10, "mobilenetv2_0.35"),
    "user": (dict(arch="user_models:tiny_cnn", kwargs={"width": 4}), (32, 32, 3), 3, "tiny_cnn"),
}


@pytest.mark.parametrize("case", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_every_family_emits_float32_logits_and_trains(case, user_models_importable):
    fields, input_shape, num_classes, name = case
    model = build_model(cfg(**fields), input_shape, num_classes)
    assert model.name == name
    for output in as_list(model(np.zeros((2, *input_shape), "float32"))):
        assert tuple(output.shape) == (2, num_classes)
        assert output.dtype == tf.float32
    losses = train_losses(model, input_shape, num_classes)
    assert losses[-1] < losses[0], losses


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


# ImageNet-scale references (224x224x3, 1000 classes). Trainable parameters:
# torchvision's counts, which leave out BatchNorm's moving statistics as
# trainable_weights does; totals, where given, are keras.applications'
# count_params(). GoogLeNet: torchvision's 6,624,904 has a 3x3 conv where the
# paper has 5x5; the true 5x5 adds 16 * sum(5x5 reduce * 5x5) = 380,928; the
# two aux heads add torchvision's 6,379,984.
REFERENCE_COUNTS = {
    "alexnet": (dict(arch="alexnet", stem="imagenet"), 61_100_840),
    "vgg16": (dict(arch="vgg", depth=16, batch_norm=False, stem="imagenet"), 138_357_544),
    "googlenet": (dict(arch="googlenet", stem="imagenet"), 6_624_904 + 380_928),
    "googlenet-aux": (
        dict(arch="googlenet", stem="imagenet", aux_heads=True),
        6_624_904 + 380_928 + 6_379_984,
    ),
    "resnet18": (dict(arch="resnet", blocks=[2, 2, 2, 2], stem="imagenet"), 11_689_512),
    "resnet34": (dict(arch="resnet", blocks=[3, 4, 6, 3], stem="imagenet"), 21_797_672),
    "resnet50": (
        dict(arch="resnet", blocks=[3, 4, 6, 3], block_type="bottleneck", stem="imagenet"),
        25_557_032,
    ),
    "densenet121": (dict(arch="densenet", stem="imagenet"), 7_978_856, 8_062_504),
    "mobilenetv2": (dict(arch="mobilenetv2"), 3_504_872, 3_538_984),
}


@pytest.mark.parametrize("case", REFERENCE_COUNTS.values(), ids=REFERENCE_COUNTS.keys())
def test_parameter_counts_match_references(case):
    fields, trainable, *total = case
    model = build_model(cfg(**fields), (224, 224, 3), 1000)
    assert trainable_params(model) == trainable
    assert total in ([], [model.count_params()])
    assert tuple(as_list(model.outputs)[0].shape) == (None, 1000)


def test_lenet5_has_the_classic_61706_parameters():
    model = build_model(cfg(arch="lenet5"), (28, 28, 1), 10)
    assert model.count_params() == 61_706


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
    assert any(layer.name == "predictions" for layer in model.layers) == keras_top
    for name in ("Conv1", "Conv_1"):
        loaded, expected = model.get_layer(name), reference.get_layer(name)
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
