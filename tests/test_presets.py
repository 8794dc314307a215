"""engine.presets and the packaged presets/*.toml files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from engine.config import ARCHITECTURES, ConfigError, RunConfig, load_toml
from engine.presets import (
    DEFAULT_PRESET,
    list_presets,
    load_preset,
    packaged_dir,
    preset_names,
    save_user_preset,
    user_dir,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_FILES = sorted((Path(__file__).parent.parent / "presets").glob("*.toml"))
REQUIRED = (
    "lenet5-digits",
    "lenet5-mnist",
    "alexnet-cifar10",
    "vgg16-cifar10",
    "googlenet-cifar10",
    "resnet18-cifar10",
    "resnet34-cifar10",
    "resnet50-imagenet",
    "densenet121-cifar10",
    "mobilenetv2-flowers",
)
# Fields that say *what* a preset trains rather than *how*: the network's
# identity and the dataset's own shape and split names. Every other value that
# differs from the default is a choice, and needs its reason beside it.
IDENTITY_FIELDS = {
    ("", "name"),
    ("", "description"),
    ("model", "arch"),
    ("model", "blocks"),
    ("model", "block_type"),
    ("model", "depth"),
    ("model", "growth_rate"),
    ("model", "block_config"),
    ("data", "dataset"),
    ("data", "image_size"),
    ("data", "channels"),
    ("data", "num_classes"),
    ("data", "train_split"),
    ("data", "val_split"),
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDECK_HOME", str(tmp_path))
    return tmp_path


def write_user_preset(home: Path, name: str, text: str) -> Path:
    directory = home / "presets"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def test_packaged_dir_holds_the_repository_presets():
    assert sorted(p.name for p in packaged_dir().glob("*.toml")) == [p.name for p in PRESET_FILES]


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_every_packaged_preset_loads_with_a_description(path):
    config = load_preset(path.stem)
    assert isinstance(config, RunConfig)
    assert config.name == path.stem
    assert config.description.strip()
    assert "\n" not in config.description


def test_list_presets_loads_every_packaged_preset_without_error():
    infos = list_presets()
    assert [i.name for i in infos] == sorted(p.stem for p in PRESET_FILES)
    for info in infos:
        assert info.error is None, info.error
        assert info.source == "packaged"
        assert info.config is not None and info.description == info.config.description
        assert info.model == info.config.model.arch
        assert info.dataset == info.config.data.dataset


def test_every_architecture_has_a_preset():
    used = {load_preset(p.stem).model.arch for p in PRESET_FILES}
    assert set(ARCHITECTURES) <= used


def test_required_presets_exist():
    assert set(REQUIRED) <= set(preset_names())
    assert DEFAULT_PRESET == "lenet5-digits"


def test_default_preset_is_small_and_embedded():
    config = load_preset(DEFAULT_PRESET)
    assert config.model.arch == "lenet5"
    assert config.data.dataset == "digits"


def test_lenet5_mnist():
    config = load_preset("lenet5-mnist")
    assert config.model.arch == "lenet5"
    assert config.data.dataset == "tfds:mnist"
    assert config.data.image_size == (28, 28)


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("alexnet-cifar10", "alexnet"),
        ("vgg16-cifar10", "vgg"),
        ("googlenet-cifar10", "googlenet"),
        ("resnet18-cifar10", "resnet"),
        ("resnet34-cifar10", "resnet"),
        ("densenet121-cifar10", "densenet"),
    ],
)
def test_cifar10_presets(name, arch):
    config = load_preset(name)
    assert config.model.arch == arch
    assert config.data.dataset == "tfds:cifar10"
    assert config.data.image_size == (32, 32)


def test_vgg16_is_depth_16():
    assert load_preset("vgg16-cifar10").model.depth == 16


def test_resnet18_is_basic_2_2_2_2():
    model = load_preset("resnet18-cifar10").model
    assert model.blocks == [2, 2, 2, 2]
    assert model.block_type == "basic"


def test_resnet34_is_basic_3_4_6_3():
    model = load_preset("resnet34-cifar10").model
    assert model.blocks == [3, 4, 6, 3]
    assert model.block_type == "basic"


def test_resnet50_imagenet_is_bottleneck_at_224():
    config = load_preset("resnet50-imagenet")
    assert config.model.blocks == [3, 4, 6, 3]
    assert config.model.block_type == "bottleneck"
    assert config.data.dataset == "tfds:imagenet2012"
    assert config.data.image_size == (224, 224)


def test_densenet121_blocks():
    model = load_preset("densenet121-cifar10").model
    assert model.block_config == [6, 12, 24, 16]
    assert model.growth_rate == 32


def test_mobilenetv2_flowers_is_the_seed_loop():
    config = load_preset("mobilenetv2-flowers")
    assert config.model.arch == "mobilenetv2"
    assert config.model.weights is None
    assert config.data.dataset == "tfds:tf_flowers"
    assert config.data.image_size == (224, 224)
    assert config.train.batch_size == 32
    assert config.train.optimizer == "adam"
    assert config.train.learning_rate == pytest.approx(1e-3)


def assignments(text: str) -> list[tuple[str, str, int]]:
    """(section, key, line index) of each key = value line of a flat preset file."""
    found, section = [], ""
    for index, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
        elif stripped and not stripped.startswith("#") and "=" in stripped:
            found.append((section, stripped.split("=", 1)[0].strip(), index))
    return found


def has_reason(lines: list[str], index: int) -> bool:
    """A comment on the line itself or on the line above (two related values may share one)."""
    return _has_comment(lines[index]) or (index > 0 and _has_comment(lines[index - 1]))


def _has_comment(line: str) -> bool:
    # Strings are blanked first, so a '#' inside one is not taken for a comment.
    return "#" in _STRING.sub('""', line)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'")


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_preset_values_that_differ_from_defaults_give_a_reason(path):
    text = path.read_text()
    lines = text.splitlines()
    data = tomllib.loads(text)
    defaults = RunConfig().model_dump(mode="json")
    missing = []
    for section, key, index in assignments(text):
        if (section, key) in IDENTITY_FIELDS:
            continue
        value = data[section][key] if section else data[key]
        default = defaults[section][key] if section else defaults[key]
        if value != default and not has_reason(lines, index):
            missing.append(f"{section}.{key} = {value!r} (default {default!r})")
    assert not missing, f"{path.name}: no reason given for " + "; ".join(missing)


def test_reason_rule_sees_comments_and_ignores_hash_in_strings():
    lines = [
        "a = 1  # why",
        "b = 2",
        "c = 3",
        "# why d",
        "d = 4",
        'e = "x#y"',
        'f = "x\\"#y"',
        "g = 5  # why g",
    ]
    assert has_reason(lines, 0)
    assert has_reason(lines, 1)  # shares the comment of the line above
    assert not has_reason(lines, 2)  # two lines below is too far
    assert has_reason(lines, 4)
    assert not has_reason(lines, 5)
    assert not has_reason(lines, 6)
    assert has_reason(lines, 7)


def test_user_preset_shadows_a_packaged_one(home):
    write_user_preset(
        home,
        "lenet5-digits",
        'description = "mine"\n[train]\nbatch_size = 16\nepochs = 1\n',
    )
    config = load_preset("lenet5-digits")
    assert config.description == "mine"
    assert config.train.batch_size == 16
    # The user file replaces the packaged one whole: nothing of it leaks through.
    assert config.train.learning_rate == RunConfig().train.learning_rate
    info = next(i for i in list_presets() if i.name == "lenet5-digits")
    assert info.source == "user"
    assert info.path == home / "presets" / "lenet5-digits.toml"
    assert preset_names().count("lenet5-digits") == 1


def test_user_preset_is_listed_beside_packaged_ones(home):
    write_user_preset(home, "tiny", '[data]\ndataset = "synthetic"\n')
    names = preset_names()
    assert "tiny" in names and DEFAULT_PRESET in names
    assert load_preset("tiny").data.dataset == "synthetic"


def test_home_argument_overrides_environment(tmp_path):
    other = tmp_path / "other"
    write_user_preset(other, "only-here", 'description = "x"\n')
    assert "only-here" in preset_names(home=other)
    assert "only-here" not in preset_names()
    assert load_preset("only-here", home=other).description == "x"
    assert user_dir(other) == other / "presets"


def test_broken_user_presets_are_listed_with_their_error(home):
    malformed = write_user_preset(home, "malformed", "[train\nbatch_size = 1\n")
    write_user_preset(home, "typo", "[train]\nbatchsize = 64\n")
    write_user_preset(home, "good", 'description = "fine"\n')
    infos = {i.name: i for i in list_presets()}
    assert infos["malformed"].config is None
    assert str(malformed) in infos["malformed"].error
    assert "line 1" in infos["malformed"].error
    assert infos["typo"].config is None
    assert "batchsize" in infos["typo"].error and "batch_size" in infos["typo"].error
    assert infos["typo"].model == "?"
    assert infos["good"].error is None and infos["good"].description == "fine"
    packaged = [i for i in infos.values() if i.source == "packaged"]
    assert packaged and all(i.error is None for i in packaged)


def test_loading_a_broken_user_preset_raises_config_error(home):
    write_user_preset(home, "typo", "[train]\nbatchsize = 64\n")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_preset("typo")


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError) as caught:
        load_preset("resnet18-cifar")
    message = str(caught.value)
    assert "'resnet18-cifar'" in message
    assert "did you mean 'resnet18-cifar10'?" in message


def test_overrides_are_applied():
    config = load_preset("resnet18-cifar10", ["train.batch_size=64", "data.image_size=[64, 64]"])
    assert config.train.batch_size == 64
    assert config.data.image_size == (64, 64)
    assert config.model.blocks == [2, 2, 2, 2]
    assert load_preset("resnet18-cifar10").train.batch_size == 128


def test_override_errors_name_the_preset_and_field():
    with pytest.raises(ConfigError) as caught:
        load_preset("lenet5-digits", ["train.batch_size=0"])
    message = str(caught.value)
    assert "lenet5-digits" in message and "train.batch_size" in message and "got 0" in message
    with pytest.raises(ConfigError, match=r"did you mean train\.batch_size\?"):
        load_preset("lenet5-digits", ["train.batchsize=64"])


def test_save_user_preset_reads_back_equal(home):
    config = load_preset("mobilenetv2-flowers", ["train.batch_size=16"])
    path = save_user_preset("my-flowers", config)
    assert path == home / "presets" / "my-flowers.toml"
    loaded = load_preset("my-flowers")
    assert loaded == config.model_copy(update={"name": "my-flowers"})
    assert load_toml(path)["name"] == "my-flowers"


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "with space", "semi;colon"])
def test_bad_preset_name_is_rejected(home, name):
    with pytest.raises(ConfigError, match="preset name"):
        save_user_preset(name, RunConfig())
    assert not (home / "presets").exists() or not any((home / "presets").iterdir())


def test_broken_user_preset_with_a_value_for_a_section_is_listed(home):
    # `convdeck presets` prints info.model and info.dataset of every preset.
    write_user_preset(home, "flat", 'model = "resnet"\ndata = "digits"\n')
    info = next(i for i in list_presets() if i.name == "flat")
    assert info.config is None
    assert "model" in info.error
    assert isinstance(info.model, str)
    assert isinstance(info.dataset, str)
