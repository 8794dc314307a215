"""engine.config: validation errors as one line, --set values, merging, TOML out and back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import one_line_error, run_cli

from engine.config import (
    ARCHITECTURES,
    INT32_MAX,
    SEED_MAX,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    apply_override,
    config_to_toml,
    deep_merge,
    load_toml,
    parse_value,
    validate_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_FILES = sorted((Path(__file__).parent.parent / "presets").glob("*.toml"))


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(data)
    message = str(caught.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    return message


def test_defaults_are_valid():
    config = validate_config({})
    assert config == RunConfig()
    assert config.model.arch in ARCHITECTURES
    assert config.data.dataset == "digits"
    assert config.train.batch_size > 0 and config.train.epochs > 0


@pytest.mark.parametrize("value", [0, -1])
def test_batch_size_must_be_positive(value):
    message = config_error({"train": {"batch_size": value}})
    assert message == f"train.batch_size: got {value}; expected an integer from 1 to {INT32_MAX}"


def test_epochs_must_be_positive():
    message = config_error({"train": {"epochs": 0}})
    assert message == f"train.epochs: got 0; expected an integer from 1 to {INT32_MAX}"


# Every integer that reaches TensorFlow, with the range it takes: TOML and Python
# integers have no limit, so without a bound 2**63 passes and fails deep in TensorFlow.
BOUNDED_INTEGERS = [
    ("train", "batch_size", 1, INT32_MAX),
    ("train", "epochs", 1, INT32_MAX),
    ("train", "steps_per_epoch", 1, INT32_MAX),
    ("train", "step_epochs", 1, INT32_MAX),
    ("train", "accumulation_steps", 1, INT32_MAX),
    ("train", "steps_per_call", 0, INT32_MAX),
    ("train", "checkpoint_every", 1, INT32_MAX),
    ("train", "keep_checkpoints", 1, INT32_MAX),
    ("train", "early_stop_patience", 0, INT32_MAX),
    ("train", "val_every_steps", 0, INT32_MAX),
    ("train", "virtual_cpus", 0, INT32_MAX),
    ("train", "seed", 0, SEED_MAX),
    ("data", "channels", 1, 4),
    ("data", "num_classes", 2, INT32_MAX),
    ("data", "shuffle_buffer", 0, INT32_MAX),
    ("data", "synthetic_examples", 1, INT32_MAX),
    ("data", "seed", 0, SEED_MAX),
    ("model", "growth_rate", 1, INT32_MAX),
]


@pytest.mark.parametrize(("section", "field", "low", "high"), BOUNDED_INTEGERS)
def test_bounded_integers_refuse_what_tensorflow_cannot_take(section, field, low, high):
    for value in (high + 1, 2**63, low - 1):
        message = config_error({section: {field: value}})
        assert message == f"{section}.{field}: got {value}; expected an integer from {low} to {high}"
    for value in (low, high):
        assert getattr(getattr(validate_config({section: {field: value}}), section), field) == value


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("data", "image_size", [32, 2**31]), ("model", "blocks", [2, 2**63]), ("model", "block_config", [6, 0])],
)
def test_integer_lists_are_bounded_too(section, field, value):
    message = config_error({section: {field: value}})
    assert message.startswith(f"{section}.{field}: got {value}; expected ")
    assert f"from 1 to {INT32_MAX}" in message


def test_early_stopping_needs_a_best_metric_to_watch():
    message = config_error({"train": {"early_stop_patience": 3, "best_metric": "none"}})
    assert message == (
        "train: early_stop_patience 3 counts validations without a new best, but best_metric is "
        "'none'; set best_metric to 'val_accuracy' or 'val_loss', or early_stop_patience to 0"
    )
    train = validate_config({"train": {"early_stop_patience": 3, "best_metric": "val_loss"}}).train
    assert (train.early_stop_patience, train.best_metric) == (3, "val_loss")
    assert "must be 'val_accuracy', 'val_loss' or 'none'" in config_error({"train": {"best_metric": "accuracy"}})


def test_a_huge_batch_size_from_the_command_line_is_one_line_exit_2(convdeck_home):
    error = one_line_error(run_cli("run", "--set", "train.batch_size=9223372036854775808"))
    assert "train.batch_size: got 9223372036854775808; expected an integer from 1 to 2147483647" in error
    assert not (convdeck_home / "runs").exists()


def test_unknown_field_suggests_the_close_name():
    message = config_error({"train": {"batchsize": 64}})
    assert "'train.batchsize'" in message
    assert "did you mean 'batch_size'?" in message
    # What is allowed: the fields of that section.
    assert "epochs" in message and "learning_rate" in message


def test_unknown_top_level_field_lists_the_sections():
    message = config_error({"modle": {"arch": "resnet"}})
    assert "'modle'" in message
    assert "did you mean 'model'?" in message


def test_unknown_arch_suggests_the_close_name():
    message = config_error({"model": {"arch": "resnt"}})
    assert "model.arch" in message
    assert "'resnt'" in message
    assert "did you mean 'resnet'?" in message
    assert all(arch in message for arch in ARCHITECTURES)


def test_custom_builder_arch_is_accepted():
    assert validate_config({"model": {"arch": "mypkg.nets:build"}}).model.arch == "mypkg.nets:build"


def test_bare_dataset_name_suggests_tfds():
    message = config_error({"data": {"dataset": "mnist"}})
    assert "data.dataset" in message
    assert "'mnist'" in message
    assert "did you mean 'tfds:mnist'?" in message
    assert "digits" in message and "synthetic" in message and "folder:PATH" in message


def test_misspelt_builtin_dataset_suggests_it():
    message = config_error({"data": {"dataset": "digit"}})
    assert "did you mean 'digits'?" in message


@pytest.mark.parametrize("dataset", ["tfds:", "folder:", "s3:bucket"])
def test_dataset_kind_without_name_or_unknown_kind_is_rejected(dataset):
    message = config_error({"data": {"dataset": dataset}})
    assert "data.dataset" in message and repr(dataset) in message


@pytest.mark.parametrize("dataset", ["digits", "synthetic", "tfds:cifar10", "folder:/data/pets"])
def test_known_datasets_are_accepted(dataset):
    assert validate_config({"data": {"dataset": dataset}}).data.dataset == dataset


def test_image_size_must_be_positive():
    message = config_error({"data": {"image_size": [0, 3]}})
    assert "data.image_size" in message
    assert "[0, 3]" in message
    assert f"each from 1 to {INT32_MAX}" in message


def test_optimizer_not_allowed():
    message = config_error({"train": {"optimizer": "rmsprop"}})
    assert "train.optimizer" in message
    assert "'rmsprop'" in message
    assert "'adam'" in message and "'sgd'" in message and "'adamw'" in message


def test_wrong_type_names_the_value():
    message = config_error({"train": {"batch_size": "lots"}})
    assert "train.batch_size" in message and "'lots'" in message


@pytest.mark.parametrize("blocks", [[], [2, 0, 2, 2]])
def test_resnet_blocks_must_be_positive(blocks):
    message = config_error({"model": {"blocks": blocks}})
    assert "model.blocks" in message and str(blocks) in message


@pytest.mark.parametrize(
    ("section", "field"),
    [("train", "learning_rate"), ("train", "weight_decay"), ("model", "alpha")],
)
def test_infinite_numbers_are_rejected(section, field):
    # `--set train.learning_rate=inf` reads as a float; it must not reach the optimiser.
    message = config_error({section: {field: parse_value("inf")}})
    assert f"{section}.{field}" in message and "inf" in message


def test_source_prefixes_the_error():
    with pytest.raises(ConfigError, match=r"^preset x: train\.epochs"):
        validate_config({"train": {"epochs": 0}}, source="preset x")


@pytest.mark.parametrize("weights", ["none", "None", ""])
def test_weights_none_spelling_means_random_init(weights):
    assert ModelConfig(weights=weights).weights is None


def test_validate_assignment_rejects_bad_value():
    config = RunConfig()
    with pytest.raises(ValueError):
        config.train.batch_size = 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64", 64),
        ("1e-3", 1e-3),
        ("true", True),
        ("false", False),
        ("[224, 224]", [224, 224]),
        ('"text"', "text"),
        ("0.5", 0.5),
        ("adam", "adam"),
        ("tfds:cifar10", "tfds:cifar10"),
        ("folder:/data/my pets", "folder:/data/my pets"),
        ("train[:80%]", "train[:80%]"),
    ],
)
def test_parse_value_reads_toml_else_plain_string(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_apply_override_nests_and_parses():
    data: dict = {"train": {"epochs": 3}}
    result = apply_override(data, "train.batch_size=64")
    assert result is data
    assert data == {"train": {"epochs": 3, "batch_size": 64}}
    apply_override(data, "data.image_size = [224, 224]")
    assert data["data"] == {"image_size": [224, 224]}
    apply_override(data, "model.kwargs.width=2")
    assert data["model"] == {"kwargs": {"width": 2}}
    apply_override(data, "train.optimizer=sgd")
    assert data["train"]["optimizer"] == "sgd"


def test_apply_override_keeps_equals_signs_in_the_value():
    data: dict = {}
    apply_override(data, "data.train_split=train[:80%]=x")
    assert data == {"data": {"train_split": "train[:80%]=x"}}


@pytest.mark.parametrize("assignment", ["foo", "train.batch_size", "=64", ""])
def test_apply_override_rejects_missing_key_or_equals(assignment):
    with pytest.raises(ConfigError, match="expected section.field=VALUE"):
        apply_override({}, assignment)


@pytest.mark.parametrize(
    ("assignment", "hint"),
    [
        ("batch_size=64", "did you mean train.batch_size?"),  # the section left out
        ("train.batchsize=64", "did you mean train.batch_size?"),
        ("trian.epochs=2", "did you mean train.epochs?"),
        ("seed=1", "did you mean data.seed or train.seed?"),
        ("lr=0.1", "a setting is section.field, in model, data, train, notify"),
    ],
)
def test_apply_override_names_the_closest_settings_of_an_unknown_key(assignment, hint):
    data = {"train": {"epochs": 3}}
    with pytest.raises(ConfigError, match="unknown field") as error:
        apply_override(data, assignment)
    assert str(error.value).endswith(hint) and "\n" not in str(error.value)
    assert data == {"train": {"epochs": 3}}  # nothing applied


def test_apply_override_rejects_assigning_into_a_scalar():
    data = {"train": {"batch_size": 128}}
    with pytest.raises(ConfigError, match="'batch_size' is a value, not a section"):
        apply_override(data, "train.batch_size.x=1")
    assert data == {"train": {"batch_size": 128}}


def test_deep_merge_lays_sections_over_each_other():
    base = {"name": "a", "train": {"batch_size": 128, "epochs": 10}, "model": {"arch": "lenet5"}}
    override = {"train": {"epochs": 3}, "data": {"dataset": "synthetic"}, "name": "b"}
    merged = deep_merge(base, override)
    assert merged == {
        "name": "b",
        "train": {"batch_size": 128, "epochs": 3},
        "model": {"arch": "lenet5"},
        "data": {"dataset": "synthetic"},
    }
    # Neither input is changed.
    assert base["train"] == {"batch_size": 128, "epochs": 10}
    assert override == {"train": {"epochs": 3}, "data": {"dataset": "synthetic"}, "name": "b"}


def test_deep_merge_value_replaces_section_and_back():
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    assert deep_merge({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def round_trip(config: RunConfig) -> RunConfig:
    return validate_config(tomllib.loads(config_to_toml(config)))


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_config_to_toml_round_trips_every_packaged_preset(path):
    config = validate_config({**load_toml(path), "name": path.stem})
    assert round_trip(config) == config


def test_packaged_presets_exist():
    assert len(PRESET_FILES) >= 10


def test_config_to_toml_round_trips_weights_none():
    config = validate_config({"model": {"arch": "mobilenetv2", "weights": "none"}})
    assert config.model.weights is None
    text = config_to_toml(config)
    assert "weights" not in text
    assert round_trip(config) == config


def test_config_to_toml_round_trips_custom_builder_kwargs_and_odd_strings():
    config = RunConfig(
        name="mine",
        description='quotes " and \\ backslash, tab\t, café',
        model=ModelConfig(
            arch="pkg.mod:build",
            weights="imagenet",
            kwargs={"width": 2, "weird key": "x", "nested": {"depth": [1, 2]}},
        ),
        data=DataConfig(dataset="folder:/data/my pets", image_size=(48, 64), channels=3),
    )
    assert round_trip(config) == config


def test_config_to_toml_round_trips_non_bmp_text():
    # json.dumps writes an emoji as a surrogate pair escape, which TOML rejects.
    config = RunConfig(description="flowers \U0001f33c at 224x224")
    assert round_trip(config) == config


def test_config_to_toml_round_trips_val_split_none():
    # val_split None (carve validation out of train) is a documented value.
    config = RunConfig(data=DataConfig(dataset="tfds:cifar10", val_split=None))
    assert round_trip(config).data.val_split is None


def test_load_toml_reads_a_file(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('name = "x"\n[train]\nbatch_size = 64\n')
    assert load_toml(path) == {"name": "x", "train": {"batch_size": 64}}


def test_load_toml_names_the_file_and_line_of_a_syntax_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[train]\nbatch_size = = 64\n')
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "\n" not in message


def test_load_toml_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_toml(tmp_path / "absent.toml")
