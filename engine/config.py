"""The one validated run configuration: model, data and train sections.

TF-free and fast to import: the UI validates what the user types with these
same models, so the errors shown inline are the ones the worker would raise.
A preset overrides some fields; ``--set section.field=VALUE`` overrides more.
"""

from __future__ import annotations

import difflib
import sys
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from engine import remedies
from engine.errors import ConfigError  # noqa: F401 - re-exported: engine.config.ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ARCHITECTURES = (
    "lenet5",
    "alexnet",
    "vgg",
    "googlenet",
    "resnet",
    "densenet",
    "mobilenetv2",
)
DATASET_KINDS = ("digits", "synthetic", "tfds:NAME", "folder:PATH")

# TOML and Python integers have no limit; TensorFlow keeps shapes, batch sizes
# and its counters in 32-bit integers in places, so a larger count fails deep
# inside it (or wraps). Every count in the config is refused past this.
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # NumPy's seeds, which tf.keras.utils.set_random_seed sets, are 32-bit unsigned


def _between(low: int, high: int) -> AfterValidator:
    """An integer check whose error names the value and the whole allowed range."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"got {value}; expected an integer from {low} to {high}")
        return value

    return AfterValidator(check)


Count = Annotated[int, _between(1, INT32_MAX)]
"""A count of things TensorFlow builds or runs: images, steps, epochs, classes, filters."""
CountOrZero = Annotated[int, _between(0, INT32_MAX)]
"""A count where 0 means off or automatic."""
Seed = Annotated[int, _between(0, SEED_MAX)]


class _Section(BaseModel):
    # extra="forbid" turns a typo into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """Which network to build. Fields that an architecture ignores are harmless."""

    arch: str = "lenet5"
    # ResNet: blocks per stage; [2,2,2,2] is ResNet-18, [3,4,6,3] ResNet-34/50.
    blocks: list[int] = Field(default_factory=lambda: [2, 2, 2, 2])
    block_type: Literal["basic", "bottleneck"] = "basic"
    # VGG: 11, 13, 16 or 19 weight layers.
    depth: Literal[11, 13, 16, 19] = 16
    batch_norm: bool = True
    # GoogLeNet: the two auxiliary classifiers of Inception v1.
    aux_heads: bool = False
    # DenseNet: growth rate and layers per dense block (121 by default).
    growth_rate: Count = 32
    block_config: list[int] = Field(default_factory=lambda: [6, 12, 24, 16])
    # MobileNetV2 (tf.keras.applications).
    alpha: float = Field(1.0, gt=0)
    # "imagenet" or a weights file's path: the network starts from pretrained weights, and
    # its inputs go through its keras.applications family's preprocess_input (registry.py).
    weights: Optional[str] = None
    include_top: bool = True
    # Transfer learning: train only the new head on the base (keras.applications' part).
    freeze_base: bool = False
    # What train.fine_tune_at_epoch unfreezes: the base's layers from this one (a name) to
    # the top, or this top fraction of them (0.3: the top 30%; 1.0: the whole base).
    fine_tune_from: Union[float, str] = 1.0
    # "auto" picks the 3x3 small-image stem for inputs of 64 pixels or less.
    stem: Literal["auto", "small", "imagenet"] = "auto"
    dropout: float = Field(0.0, ge=0, lt=1)
    # Keyword arguments passed to a user's own "module:function" builder.
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if ":" in value or value in ARCHITECTURES:
            return value
        raise ValueError(
            f"unknown architecture {value!r}{_did_you_mean(value, ARCHITECTURES)}; "
            f"expected one of {', '.join(ARCHITECTURES)} or 'package.module:function'"
        )

    @field_validator("weights")
    @classmethod
    def _weights_or_none(cls, value: Optional[str]) -> Optional[str]:
        # TOML has no null, so presets write "none" for random initialisation.
        if value is None or value.lower() in ("", "none"):
            return None
        return value

    @field_validator("fine_tune_from")
    @classmethod
    def _layer_or_fraction(cls, value: Union[float, str]) -> Union[float, str]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("got ''; expected a layer name of the base or a fraction in (0, 1]")
            return value
        if not 0 < value <= 1:
            raise ValueError(f"got {value}; expected a fraction of the base's layers in (0, 1] (0.3: the top 30%)")
        return value

    @field_validator("blocks", "block_config")
    @classmethod
    def _positive_stages(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= n <= INT32_MAX for n in value):
            raise ValueError(f"got {value}; expected a non-empty list of integers from 1 to {INT32_MAX}")
        return value


class DataConfig(_Section):
    """Where the images come from and how they are prepared."""

    dataset: str = "digits"
    image_size: tuple[int, int] = (32, 32)
    # None: what the dataset has (digits 1, synthetic 3); set to force.
    channels: Optional[Annotated[int, _between(1, 4)]] = None
    # None: what the dataset has; synthetic uses 10 unless set.
    num_classes: Optional[Annotated[int, _between(2, INT32_MAX)]] = None
    resize_method: Literal["nearest", "bilinear"] = "bilinear"
    validation_split: float = Field(0.2, ge=0, lt=1)
    # tfds: split names; val_split None carves validation_split out of train.
    train_split: str = "train"
    val_split: Optional[str] = "test"
    data_dir: Optional[str] = None
    as_supervised: bool = True
    normalize: bool = True
    augment_flip: bool = False
    augment_crop: bool = False
    shuffle_buffer: CountOrZero = 10_000
    # "auto" caches datasets that fit in a few hundred MB.
    cache: Literal["auto", "yes", "no"] = "auto"
    # folder: an image that cannot be decoded ends the run naming its file (false),
    # or is left out and counted in the run's log (true).
    skip_bad_images: bool = False
    # synthetic: examples per epoch.
    synthetic_examples: Count = 2048
    seed: Seed = 0

    @field_validator("val_split")
    @classmethod
    def _split_or_none(cls, value: Optional[str]) -> Optional[str]:
        # "none" (TOML has no null) carves validation_split out of the train split.
        return None if value is None or value.lower() in ("", "none") else value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value in ("digits", "synthetic"):
            return value
        kind, sep, rest = value.partition(":")
        if sep and kind in ("tfds", "folder") and rest:
            return value
        hint = _did_you_mean(value, ("digits", "synthetic"))
        if not hint and not sep:
            hint = f" (did you mean 'tfds:{value}'?)"
        raise ValueError(
            f"unknown dataset {value!r}{hint}; expected one of {', '.join(DATASET_KINDS)}"
        )

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(not 1 <= n <= INT32_MAX for n in value):
            raise ValueError(
                f"got {list(value)}; expected [height, width] in pixels, each from 1 to {INT32_MAX}"
            )
        return value


class TrainConfig(_Section):
    """How to train: batch, optimiser, schedule, precision, checkpoints, policies."""

    batch_size: Count = 128
    epochs: Count = 10
    # Cap steps per epoch (None: the whole dataset); handy for smoke runs.
    steps_per_epoch: Optional[Count] = None
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    # step schedule: multiply by step_gamma every step_epochs epochs.
    step_epochs: Count = 10
    step_gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Transfer learning's second stage: after this many epochs the top of the base
    # (model.fine_tune_from) unfreezes and the learning rate is multiplied by
    # fine_tune_lr_factor (unset: no such stage).
    fine_tune_at_epoch: Optional[Count] = None
    fine_tune_lr_factor: float = Field(0.1, gt=0, le=1)
    mixed_precision: bool = False
    accumulation_steps: Count = 1
    # XLA for the train step: "auto" where it pays, on GPUs (on a CPU its steps
    # measured slower: engine/train/xla.py); true or false to force it.
    jit_compile: Literal["auto"] | bool = "auto"
    # Steps run inside one tf.function call. 0: sized from the measured step time
    # so a call lasts about a quarter of a second, and pause, stop and remedies,
    # obeyed between calls, answer within half a second (or one step, if longer).
    # N: exactly N, and those wait for up to N steps.
    steps_per_call: CountOrZero = 0
    # Steps between checkpoints, counted from the last one (epoch ends save too):
    # a killed worker loses at most this many steps.
    checkpoint_every: Count = 200
    keep_checkpoints: Count = 3
    # The validation figure whose best weights are kept in checkpoints/best/, apart from the
    # rolling checkpoints ("none": keep none). Higher is better for accuracy, lower for loss.
    best_metric: Literal["val_accuracy", "val_loss", "none"] = "val_accuracy"
    # End the run (reason "early_stop") after this many validations in a row without a new
    # best of best_metric (0: never).
    early_stop_patience: CountOrZero = 0
    # Validate every this many steps inside epochs too (0: only at epoch ends): long epochs
    # then keep their best weights and count towards early stopping more often than once.
    val_every_steps: CountOrZero = 0
    # ask | stop | a remedy's name (engine.remedies is the list); checked below.
    on_oom: str = "ask"
    on_nan: Literal["pause", "stop"] = "pause"
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    devices: list[str] = Field(default_factory=list)
    virtual_cpus: CountOrZero = 0
    seed: Seed = 0

    @model_validator(mode="after")
    def _patience_needs_a_metric(self) -> TrainConfig:
        if self.early_stop_patience and self.best_metric == "none":
            raise ValueError(
                f"early_stop_patience {self.early_stop_patience} counts validations without a new "
                "best, but best_metric is 'none'; set best_metric to 'val_accuracy' or 'val_loss', "
                "or early_stop_patience to 0"
            )
        return self

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _jit_setting(cls, value: Any) -> Any:
        # Strict: a 1 or a "yes" read as a bool would hide a typo of "auto".
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError(f'got {value!r}; expected "auto", true or false')

    @field_validator("on_oom", mode="before")
    @classmethod
    def _former_remedy_name(cls, value: Any) -> Any:
        # Old configs and presets say "halve": read it as "halve-batch", with a hint.
        return remedies.read_policy(value)

    @field_validator("on_oom")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        policies = remedies.oom_policies()  # read now: the catalogue is the list
        if value in policies:
            return value
        raise ValueError(f"got {value!r}{_did_you_mean(value, policies)}; expected one of {', '.join(policies)}")


class NotifyConfig(_Section):
    """This run's own alert URLs (``convdeck run --notify URL``), beside ``convdeck.toml``'s."""

    urls: list[str] = Field(default_factory=list)

    @field_validator("urls")
    @classmethod
    def _readable_urls(cls, urls: list[str]) -> list[str]:
        if urls:  # Apprise loads only when a URL is given; a typo is caught now, not at 3 a.m.
            from engine.run.notify import check_urls

            try:
                check_urls(urls, source="")  # pydantic names the field
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return urls


class RunConfig(_Section):
    """A whole run: what a preset describes once defaults are filled in."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @model_validator(mode="after")
    def _transfer_settings_fit(self) -> RunConfig:
        # Read now: the family table (engine.models.registry) imports this module.
        from engine.models.registry import check_transfer_settings

        try:
            check_transfer_settings(self.model, self.train.epochs, self.train.fine_tune_at_epoch)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self


def _did_you_mean(value: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_fields(loc: tuple) -> list[str]:
    """The field names that exist at the parent of an error location."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def describe_validation_error(error: ValidationError, source: str = "") -> str:
    """Turn pydantic's report into one line naming field, value received and what is allowed."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(str(p) for p in loc) or "config"
    prefix = f"{source}: " if source else ""
    if first["type"] == "extra_forbidden":
        allowed = _allowed_fields(loc)
        hint = _did_you_mean(str(loc[-1]), allowed)
        section = ".".join(str(p) for p in loc[:-1]) or "top level"
        return (
            f"{prefix}unknown field {where!r}{hint}; "
            f"fields in {section}: {', '.join(allowed)}"
        )
    message = first["msg"].removeprefix("Value error, ")
    if first["type"].startswith("value_error"):
        # A check across sections (loc empty) names its own fields.
        return f"{prefix}{where}: {message}" if loc else f"{prefix}{message}"
    message = message.replace("Input should be", "must be").replace("Input", "value")
    return f"{prefix}{where}: got {first.get('input')!r}; {message}"


def validate_config(data: dict, source: str = "") -> RunConfig:
    """Build a RunConfig from plain data, raising ConfigError with one clear line."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, source)) from None


RUN_CONFIG_KEYS = ("name", "model", "data", "train")
"""What a run's config.toml always holds (see :func:`validate_run_config`)."""


def validate_run_config(data: dict, source: str) -> RunConfig:
    """A run's own config.toml, which, unlike a preset, is never partial.

    A preset overrides only what differs from the defaults, so an empty
    preset is valid. A run's config.toml is written whole, by
    :func:`config_to_toml` through ``engine.run.store.write_config``: its name
    and its three sections are always there. One without them was emptied
    or cut short (a crash before the write reached the disk, a full disk, an
    editor), and read as the defaults it would resume a different run
    (batch 128, 10 epochs, named 'custom'): it is refused instead. A field
    missing inside a section is not: a config written by an older convdeck
    lacks the fields added since, and those rightly take their defaults.

    Raises:
        ConfigError: one line naming the file and what it lacks.
    """
    missing = [key if key == "name" else f"[{key}]" for key in RUN_CONFIG_KEYS if key not in data]
    if missing:
        state = "empty" if not data else f"cut short: it has no {', '.join(missing)}"
        raise ConfigError(
            f"{source}: {state}; a run's config always holds its name, [model], [data] and "
            "[train], so it is not read as the defaults (restore the file to go on)"
        )
    return validate_config(data, source)


def parse_value(text: str) -> Any:
    """Read a ``--set`` value as TOML (``64``, ``1e-3``, ``[2, 2]``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, assignment: str) -> dict:
    """Apply ``section.field=VALUE`` to a config dict in place and return it."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set {assignment!r}: expected section.field=VALUE, e.g. train.batch_size=64"
        )
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part, {}), dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
        target = target.get(part, {})
    # Checked here, not at validation: the whole dotted key is known, so the hint can name
    # the section a bare `batch_size` belongs to (a preset's file is checked when validated).
    if not _names_a_setting(parts):
        close = _closest_settings(key)
        hint = f"did you mean {' or '.join(close)}?" if close else (
            "a setting is section.field, in " + ", ".join(_setting_keys(sections_only=True))
        )
        raise ConfigError(f"--set {assignment!r}: unknown field {key!r}; {hint}")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = parse_value(raw.strip())
    return data


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _names_a_setting(parts: list[str]) -> bool:
    """Whether the dotted key ``parts`` names a field (or section) of :class:`RunConfig`."""
    model: Any = RunConfig
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if _is_section(field.annotation):
            model = field.annotation
            continue
        # A free-form table (model.kwargs) takes any key below it.
        free_form = field.annotation is dict or getattr(field.annotation, "__origin__", None) is dict
        return index == len(parts) - 1 or free_form
    return True


def _setting_keys(model: Any = None, prefix: str = "", sections_only: bool = False) -> list[str]:
    """Every dotted key of the config schema (``train.batch_size``...), or only its sections."""
    keys = []
    for name, field in (model or RunConfig).model_fields.items():
        if _is_section(field.annotation):
            keys += [prefix + name] if sections_only else _setting_keys(field.annotation, f"{prefix}{name}.")
        elif not sections_only:
            keys.append(prefix + name)
    return keys


def _closest_settings(key: str) -> list[str]:
    """The dotted keys closest to ``key``: by their last part (``batch_size``), else whole."""
    keys = _setting_keys()
    by_name: dict[str, list[str]] = {}
    for dotted in keys:
        by_name.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    section, _, name = key.rpartition(".")
    close = [
        dotted
        for match in difflib.get_close_matches(name, list(by_name), n=2, cutoff=0.75)
        for dotted in by_name[match]
    ]
    in_section = [dotted for dotted in close if dotted.startswith(f"{section}.")]
    return in_section or close or difflib.get_close_matches(key, keys, n=2, cutoff=0.6)


def deep_merge(base: dict, override: dict) -> dict:
    """A new dict: ``override`` laid over ``base``, section by section."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_toml(path: Any) -> dict:
    """Read a TOML file; a syntax error becomes one line naming the file and line."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: malformed TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None


def config_to_toml(config: RunConfig) -> str:
    """Serialise a RunConfig as TOML (None values are left out, as TOML has no null)."""
    data = config.model_dump(mode="json", exclude_none=True)
    if config.data.val_split is None:
        data["data"]["val_split"] = "none"  # None means "carve from train"; keep it
    return dump_toml(data)


def dump_toml(data: dict) -> str:
    """A small TOML writer for config-shaped dicts: scalars, lists, nested tables."""
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(data: dict, path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(_toml_key(p) for p in path)}]")
    for key, value in scalars.items():
        if value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, path + [key], lines)


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
