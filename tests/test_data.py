"""engine.train.data: each dataset kind, normalisation, exact epoch order, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import tensorflow as tf

from engine.config import ConfigError, DataConfig
from engine.datasets import network
from engine.datasets.sources import StreamSource
from engine.train.data import DataBundle, EpochBatches, load_data

DIGITS = 1797


def batches_of(dataset: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def stacked(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = batches_of(dataset)
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (images_a, labels_a), (images_b, labels_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(images_a, images_b)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data(DataConfig(), batch_size=32, seed=1)


# ----- digits -------------------------------------------------------------------


def test_digits_shapes_dtypes_and_split_sizes(digits):
    assert digits.input_shape == (32, 32, 1)
    assert digits.num_classes == 10
    assert digits.train_examples + digits.val_examples == DIGITS
    assert digits.val_examples == 360
    assert digits.steps_per_epoch == digits.train_examples // 32
    assert digits.description == "digits: 1437 train / 360 val, 32x32x1, 10 classes"
    # A static batch size: what XLA and tf.distribute's rebatching want.
    assert digits.train.element_spec[0].shape == (32, 32, 32, 1)
    train = batches_of(digits.train)
    assert len(train) == digits.steps_per_epoch
    images, labels = train[0]
    assert images.shape == (32, 32, 32, 1) and images.dtype == np.float32
    assert labels.shape == (32,) and labels.dtype == np.int32
    val_images, val_labels = stacked(digits.val)
    assert val_images.shape == (360, 32, 32, 1)
    assert set(val_labels) == set(range(10))


def test_digits_train_is_normalised_per_channel_with_train_statistics():
    config = DataConfig(channels=3)
    # 1437 = 3 x 479: three batches hold the whole training split.
    bundle = load_data(config, batch_size=479)
    images, _ = stacked(bundle.train)
    assert images.shape == (1437, 32, 32, 3)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-4)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2), dtype=np.float64), 1.0, atol=1e-4)
    assert len(bundle.mean) == len(bundle.std) == 3


def test_digits_without_normalisation_keeps_pixels_in_unit_range():
    bundle = load_data(DataConfig(normalize=False), batch_size=64)
    images, _ = stacked(bundle.train)
    assert bundle.mean == [0.0] and bundle.std == [1.0]
    assert images.min() >= 0.0 and images.max() <= 1.0 + 1e-6


def test_digits_split_depends_only_on_the_data_seed(digits):
    same = load_data(DataConfig(), batch_size=32, seed=99)
    other = load_data(DataConfig(seed=5), batch_size=32, seed=1)
    val_images, val_labels = stacked(digits.val)
    same_images, same_labels = stacked(same.val)
    np.testing.assert_array_equal(val_images, same_images)
    np.testing.assert_array_equal(val_labels, same_labels)
    assert not np.array_equal(val_images, stacked(other.val)[0])


def test_digits_resize_methods_differ():
    nearest = load_data(DataConfig(resize_method="nearest", normalize=False), batch_size=64)
    bilinear = load_data(DataConfig(resize_method="bilinear", normalize=False), batch_size=64)
    nearest_images, _ = stacked(nearest.val)
    bilinear_images, _ = stacked(bilinear.val)
    # Nearest only copies the 17 grey levels of the 8x8 originals.
    assert len(np.unique(nearest_images)) <= 17
    assert not np.allclose(nearest_images, bilinear_images)


def test_train_for_epoch_is_fixed_per_epoch_and_new_each_epoch(digits):
    epoch_2 = batches_of(digits.train_for_epoch(2))
    assert_same_batches(epoch_2, batches_of(digits.train_for_epoch(2)))
    epoch_3 = batches_of(digits.train_for_epoch(3))
    assert not np.array_equal(epoch_2[0][1], epoch_3[0][1])
    assert_same_batches(batches_of(digits.train), batches_of(digits.train_for_epoch(0)))


def test_train_for_epoch_order_survives_a_new_bundle(digits):
    """A resumed run builds a new bundle; its epochs must match the old one's."""
    rebuilt = load_data(DataConfig(), batch_size=32, seed=1)
    assert_same_batches(
        batches_of(digits.train_for_epoch(4)), batches_of(rebuilt.train_for_epoch(4))
    )


@pytest.mark.parametrize("augment", [False, True])
def test_skip_batches_gives_exactly_the_tail_of_the_epoch(augment):
    config = DataConfig(augment_flip=augment, augment_crop=augment)
    bundle = load_data(config, batch_size=100, seed=3)
    whole = batches_of(bundle.train_for_epoch(1))
    assert_same_batches(whole[5:], batches_of(bundle.train_for_epoch(1, skip_batches=5)))
    assert batches_of(bundle.train_for_epoch(1, skip_batches=len(whole))) == []


@pytest.mark.parametrize("augment", [False, True])
def test_epochs_back_to_back_are_each_epoch_as_train_for_epoch_makes_it(augment):
    """One iterator trains a whole run: its epochs, made inside tf.data, are the resumable ones."""
    config = DataConfig(augment_flip=augment, augment_crop=augment)
    bundle = load_data(config, batch_size=100, seed=3)
    expected = batches_of(bundle.train_for_epoch(1, skip_batches=5))[: 12 - 5]
    for epoch in (2, 3):
        expected += batches_of(bundle.train_for_epoch(epoch))[:12]
    assert_same_batches(expected, batches_of(bundle.train_for_epochs(1, 4, 12, skip_batches=5)))


def test_a_streamed_split_shuffles_each_epoch_alike_back_to_back_under_a_global_seed_of_0():
    tf.random.set_seed(0)  # what a run's default train.seed sets: get_seed then compares seeds
    records = tf.data.Dataset.range(40)
    source = StreamSource(records, lambda r: (tf.fill([2, 2, 1], tf.cast(r, tf.float32)), r), 40, 16)
    epochs = EpochBatches(source, batch_size=8, seed=7, data_cfg=DataConfig())
    bundle = dataclasses.replace(load_data(DataConfig(), batch_size=8), _epoch_batches=epochs)
    expected = batches_of(epochs(0, 1)) + batches_of(epochs(1, 0)) + batches_of(epochs(2, 0))
    assert_same_batches(expected, batches_of(bundle.train_for_epochs(0, 3, 5, skip_batches=1)))
    assert not np.array_equal(expected[0][1], expected[4][1])


def test_augmentation_changes_train_images_but_not_validation():
    plain = load_data(DataConfig(), batch_size=100, seed=3)
    augmented = load_data(DataConfig(augment_flip=True, augment_crop=True), batch_size=100, seed=3)
    assert augmented.train.element_spec[0].shape == (100, 32, 32, 1)
    plain_batch, augmented_batch = next(iter(plain.train)), next(iter(augmented.train))
    np.testing.assert_array_equal(plain_batch[1], augmented_batch[1])
    assert not np.allclose(plain_batch[0], augmented_batch[0])
    np.testing.assert_array_equal(stacked(plain.val)[0], stacked(augmented.val)[0])


def test_a_split_smaller_than_one_batch_still_gives_one_batch():
    bundle = load_data(DataConfig(), batch_size=4096)
    assert bundle.steps_per_epoch == 1
    assert [len(labels) for _, labels in batches_of(bundle.train)] == [bundle.train_examples]


def test_no_validation_split_means_no_val_dataset():
    bundle = load_data(DataConfig(validation_split=0.0), batch_size=64)
    assert bundle.val is None and bundle.val_examples == 0
    assert bundle.train_examples == DIGITS


def test_num_classes_that_disagree_with_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match="data.num_classes: digits has 10 classes, got 5"):
        load_data(DataConfig(num_classes=5), batch_size=32)


# ----- synthetic ----------------------------------------------------------------


def test_synthetic_shapes_classes_and_counts():
    config = DataConfig(
        dataset="synthetic", image_size=(20, 24), num_classes=4, synthetic_examples=256
    )
    bundle = load_data(config, batch_size=32)
    assert bundle.input_shape == (20, 24, 3)
    assert bundle.num_classes == 4
    assert (bundle.train_examples, bundle.val_examples, bundle.steps_per_epoch) == (256, 51, 8)
    assert bundle.mean == [0.0] * 3 and bundle.std == [1.0] * 3
    images, labels = stacked(bundle.train)
    assert images.shape == (256, 20, 24, 3) and images.dtype == np.float32
    assert set(labels) == {0, 1, 2, 3}
    assert abs(images.mean()) < 0.05 and abs(images.std() - 1) < 0.05


def test_synthetic_labels_are_learnable():
    """Class means from the training split classify validation far above chance."""
    config = DataConfig(dataset="synthetic", image_size=(16, 16), synthetic_examples=1000)
    bundle = load_data(config, batch_size=100)
    images, labels = stacked(bundle.train)
    centroids = np.stack([images[labels == k].mean(0).ravel() for k in range(10)])
    val_images, val_labels = stacked(bundle.val)
    distances = ((val_images.reshape(len(val_images), 1, -1) - centroids) ** 2).sum(-1)
    assert (distances.argmin(1) == val_labels).mean() > 0.5


def test_synthetic_epochs_are_exact_and_resumable():
    config = DataConfig(dataset="synthetic", image_size=(8, 8), synthetic_examples=96)
    bundle = load_data(config, batch_size=16, seed=4)
    epoch_1 = batches_of(bundle.train_for_epoch(1))
    assert_same_batches(epoch_1, batches_of(load_data(config, 16, seed=4).train_for_epoch(1)))
    assert_same_batches(epoch_1[2:], batches_of(bundle.train_for_epoch(1, skip_batches=2)))
    assert not np.array_equal(epoch_1[0][1], batches_of(bundle.train_for_epoch(2))[0][1])


# ----- folder -------------------------------------------------------------------


def write_png(path, height: int, width: int, value: int) -> None:
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.integers(-20, 20, (height, width, 3)), 0, 255)
    path.write_bytes(tf.io.encode_png(pixels.astype(np.uint8)).numpy())


@pytest.fixture
def image_folder(tmp_path):
    """Three classes of six PNGs each, of assorted sizes and clearly different brightness."""
    for class_index, name in enumerate(["cat", "dog", "owl"]):
        (tmp_path / name).mkdir()
        for number in range(6):
            write_png(tmp_path / name / f"{number}.png", 10 + number, 12, 40 + 80 * class_index)
    return tmp_path


def test_folder_of_class_subfolders(image_folder):
    config = DataConfig(dataset=f"folder:{image_folder}", image_size=(8, 8), validation_split=1 / 3)
    bundle = load_data(config, batch_size=4)
    assert bundle.num_classes == 3
    assert bundle.input_shape == (8, 8, 3)
    assert (bundle.train_examples, bundle.val_examples, bundle.steps_per_epoch) == (12, 6, 3)
    images, labels = stacked(bundle.train)
    assert images.shape == (12, 8, 8, 3) and labels.dtype == np.int32
    # Brightness follows the class, so labels were read from the right folders.
    brightness = [images[labels == k].mean() for k in sorted(set(labels))]
    assert brightness == sorted(brightness)
    assert_same_batches(
        batches_of(bundle.train_for_epoch(2)),
        batches_of(load_data(config, batch_size=4).train_for_epoch(2)),
    )


def test_folder_streamed_from_disk_matches_in_memory(image_folder):
    config = DataConfig(dataset=f"folder:{image_folder}", image_size=(8, 8), channels=1)
    streamed = load_data(config.model_copy(update={"cache": "no"}), batch_size=4)
    cached = load_data(config, batch_size=4)
    assert streamed.input_shape == (8, 8, 1)
    assert streamed.mean == pytest.approx(cached.mean)
    assert_same_batches(
        batches_of(streamed.train_for_epoch(1, 1)), batches_of(cached.train_for_epoch(1, 1))
    )


def folder_error(path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_data(DataConfig(dataset=f"folder:{path}"), batch_size=4)
    message = str(caught.value)
    assert "\n" not in message
    assert f"expected {path}/<class_name>/<image files>" in message
    return message


def test_folder_errors_name_the_path_and_the_layout(tmp_path):
    assert "no such folder" in folder_error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "empty" in folder_error(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    write_png(flat / "a.png", 4, 4, 0)
    assert "no class subfolders" in folder_error(flat)
    no_images = tmp_path / "no_images"
    (no_images / "cat").mkdir(parents=True)
    (no_images / "cat" / "notes.txt").write_text("not an image")
    assert "no images" in folder_error(no_images)
    one_class = tmp_path / "one_class"
    (one_class / "cat").mkdir(parents=True)
    write_png(one_class / "cat" / "a.png", 4, 4, 0)
    (one_class / "dog").mkdir()
    assert "at least 2 class subfolders with images, found ['cat']" in folder_error(one_class)


def test_folder_too_small_to_split_is_a_config_error(image_folder):
    config = DataConfig(dataset=f"folder:{image_folder}", validation_split=0.01)
    with pytest.raises(ConfigError, match=r"data.validation_split=0.01"):
        load_data(config, batch_size=4)


def break_images(folder) -> list:
    """A truncated PNG, an empty file and a web page saved as a JPEG, beside the good images."""
    truncated = folder / "dog" / "truncated.png"
    truncated.write_bytes((folder / "dog" / "0.png").read_bytes()[:60])
    empty = folder / "cat" / "empty.png"
    empty.write_bytes(b"")
    page = folder / "owl" / "page.jpg"
    page.write_text("<html>404 Not Found</html>")
    return [empty, truncated, page]


def test_a_corrupt_image_is_named_before_training(image_folder):
    truncated = image_folder / "dog" / "truncated.png"
    truncated.write_bytes((image_folder / "dog" / "0.png").read_bytes()[:60])
    config = DataConfig(dataset=f"folder:{image_folder}", image_size=(8, 8))
    with pytest.raises(ConfigError) as caught:
        load_data(config, batch_size=4)
    assert str(caught.value) == (
        f"folder:{image_folder}: cannot decode {truncated}: Invalid PNG data, size 60; "
        "replace or remove it, or set data.skip_bad_images = true to train without it"
    )


def test_every_bad_image_is_found_and_counted(image_folder):
    empty = break_images(image_folder)[0]
    config = DataConfig(dataset=f"folder:{image_folder}", image_size=(8, 8))
    with pytest.raises(ConfigError) as caught:
        load_data(config, batch_size=4)
    assert f"cannot decode {empty}: Input is empty. (and 2 more); replace" in str(caught.value)


@pytest.mark.parametrize("cache", ["auto", "no"])
def test_skip_bad_images_leaves_them_out_and_says_which(image_folder, cache):
    bad = break_images(image_folder)
    config = DataConfig(
        dataset=f"folder:{image_folder}", image_size=(8, 8), skip_bad_images=True, cache=cache
    )
    bundle = load_data(config, batch_size=4)
    # The 18 good images, split as they would be without the bad ones beside them.
    assert bundle.train_examples + bundle.val_examples == 18
    named = ", ".join(str(path.relative_to(image_folder)) for path in bad)
    assert bundle.warnings == [
        f"folder:{image_folder}: skipped 3 images that cannot be decoded (data.skip_bad_images): {named}"
    ]
    images, labels = stacked(bundle.train_for_epoch(1))
    assert images.shape[1:] == (8, 8, 3) and np.isfinite(images).all()
    assert len(batches_of(bundle.val)) >= 1


@pytest.mark.slow
def test_a_run_on_a_folder_with_a_corrupt_png(convdeck_home, image_folder):
    """As a user meets it: exit 2 naming the file; with skip_bad_images the run trains and logs it."""
    from conftest import run_cli

    truncated = image_folder / "dog" / "truncated.png"
    truncated.write_bytes((image_folder / "dog" / "0.png").read_bytes()[:60])
    args = ["run", "--set", f"data.dataset=folder:{image_folder}", "--set", "train.epochs=1"]
    args += ["--set", "train.batch_size=4", "--set", "data.validation_split=0.25", "--json"]
    failed = run_cli(*args)
    assert failed.returncode == 2, failed.stderr
    assert f"cannot decode {truncated}: Invalid PNG data, size 60" in failed.stderr
    skipped = run_cli(*args, "--set", "data.skip_bad_images=true")
    assert skipped.returncode == 0, skipped.stderr
    events = [json.loads(line) for line in skipped.stdout.splitlines() if line.startswith("{")]
    logs = [event["message"] for event in events if event["type"] == "log"]
    expected = f"folder:{image_folder}: skipped 1 image that cannot be decoded (data.skip_bad_images): "
    assert expected + "dog/truncated.png" in logs
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "completed"


def test_undecodable_names_many_files_in_their_order(tmp_path):
    from engine.datasets.bad_images import skipped_message, undecodable
    from engine.datasets.folder import image_decoder

    paths = []
    for number in range(12):
        path = tmp_path / f"{number:02d}.png"
        if number % 2:
            path.write_bytes(b"not a png")
        else:
            write_png(path, 4, 4, number)
        paths.append(str(path))
    bad = undecodable(paths, image_decoder(3))
    assert bad == paths[1::2]
    message = skipped_message("folder:x", tmp_path, bad)
    assert message.endswith("skipped 6 images that cannot be decoded (data.skip_bad_images): "
                            "01.png, 03.png, 05.png, 07.png, 09.png, ...")


# ----- tfds ---------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["auto", "no"])
def test_tfds_with_mock_data(cache):
    import tensorflow_datasets as tfds

    config = DataConfig(dataset="tfds:mnist", channels=3, cache=cache)
    with tfds.testing.mock_data(num_examples=20):
        bundle = load_data(config, batch_size=8)
        assert bundle.input_shape == (32, 32, 3)
        assert bundle.num_classes == 10
        assert (bundle.train_examples, bundle.val_examples, bundle.steps_per_epoch) == (20, 20, 2)
        images, labels = batches_of(bundle.train)[0]
        assert images.shape == (8, 32, 32, 3) and labels.dtype == np.int32
        assert_same_batches(
            batches_of(bundle.train_for_epoch(1)), batches_of(bundle.train_for_epoch(1))
        )
        whole = batches_of(bundle.train_for_epoch(1))
        assert_same_batches(whole[1:], batches_of(bundle.train_for_epoch(1, skip_batches=1)))
        assert len(batches_of(bundle.val)) == 3


def test_tfds_carves_validation_out_of_train_when_val_split_is_none():
    import tensorflow_datasets as tfds

    config = DataConfig(dataset="tfds:mnist", val_split=None, validation_split=0.25)
    with tfds.testing.mock_data(num_examples=20):
        bundle = load_data(config, batch_size=4)
    assert bundle.val is not None and bundle.input_shape == (32, 32, 1)


def test_tfds_prepared_on_disk_is_read_from_its_files(tmp_path):
    """A real prepared dataset (TFDS's 20-example DummyMnist), no mocking."""
    pytest.importorskip(
        "importlib_resources", reason="tfds 4.9 needs it to prepare (tensorflow/datasets#11212)"
    )
    import tensorflow_datasets as tfds

    tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()
    config = DataConfig(dataset="tfds:dummy_mnist", data_dir=str(tmp_path), val_split=None)
    bundle = load_data(config.model_copy(update={"cache": "no"}), batch_size=4, seed=2)
    assert (bundle.train_examples, bundle.val_examples, bundle.input_shape) == (16, 4, (32, 32, 1))
    whole = batches_of(bundle.train_for_epoch(1))
    assert len(whole) == 4
    assert_same_batches(whole[1:], batches_of(bundle.train_for_epoch(1, skip_batches=1)))
    with pytest.raises(ConfigError, match="split 'tst'"):
        load_data(config.model_copy(update={"val_split": "tst"}), batch_size=4)


@pytest.fixture
def no_network(monkeypatch):
    """Hermetic: never download, even on a machine that could."""
    monkeypatch.setattr(network, "unreachable_reason", lambda: "no network (test)")


def test_tfds_not_prepared_and_not_downloadable_fails_fast_in_one_line(tmp_path, no_network):
    config = DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_data(config, batch_size=8)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"dataset tfds:mnist is not prepared in {tmp_path}")
    assert "(no network (test))" in message
    assert "tfds.load('mnist')" in message
    assert f"to {tmp_path}/mnist on this machine" in message


def test_tfds_missing_download_dependency_is_named(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def missing_module(self, *args, **kwargs):
        raise ModuleNotFoundError(
            "No module named 'importlib_resources'", name="importlib_resources"
        )

    monkeypatch.setattr(network, "unreachable_reason", lambda: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", missing_module)
    config = DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="pip install importlib_resources"):
        load_data(config, batch_size=8)


def test_network_probe_gives_up_within_its_timeout(monkeypatch):
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    # TEST-NET-1 (RFC 5737) is never routed: the probe can only time out or fail.
    monkeypatch.setattr(network, "DOWNLOAD_HOST", ("192.0.2.1", 443))
    started = time.monotonic()
    assert network.unreachable_reason(timeout=0.5) is not None
    assert time.monotonic() - started < 2


def test_unknown_tfds_name_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        load_data(DataConfig(dataset="tfds:cifar11"), batch_size=8)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown dataset 'tfds:cifar11' (did you mean 'tfds:cifar10")
