"""A sweep's search space, from the command line to Optuna's distributions.

``--grid K=[a,b]`` and ``--choice K=[a,b]`` list values; ``--uniform K=LOW:HIGH``
and ``--loguniform K=LOW:HIGH`` give a range. Each is checked here, once,
before any trial starts: the value's shape, low <= high, a log range above 0,
and (``check_against``) that every value is one the run config accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import parse_value
from engine.errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform")


@dataclass(frozen=True)
class Param:
    """One searched config field: its dotted key, its kind, and its values or range."""

    key: str
    kind: str
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def listed(self) -> bool:
        """A list of values (grid, choice) rather than a range."""
        return self.kind in ("grid", "choice")

    def distribution(self) -> Any:
        """The Optuna distribution this parameter is sampled from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        if self.listed:
            return CategoricalDistribution(list(self.values))
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def describe(self) -> str:
        if self.listed:
            return f"{self.key} in {list(self.values)}"
        return f"{self.key} {self.kind} {self.low:g}..{self.high:g}"


def parse_param(kind: str, text: str) -> Param:
    """``KEY=VALUE`` of a ``--grid``/``--choice``/``--uniform``/``--loguniform`` option.

    Raises:
        ConfigError: the option's value has the wrong shape, with the right one in the message.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or "." not in key:
        raise ConfigError(f"--{kind} {text!r}: expected section.field={_example(kind)}")
    if kind in ("grid", "choice"):
        return Param(key, kind, values=_listed(kind, key, raw))
    low, high = _range(kind, key, raw)
    return Param(key, kind, low=low, high=high)


def _example(kind: str) -> str:
    return "[1e-3, 3e-3]" if kind in ("grid", "choice") else "1e-5:1e-3"


def _listed(kind: str, key: str, raw: str) -> tuple:
    values = parse_value(raw)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--{kind} {key}={raw}: the values must be a non-empty list, e.g. {key}=[32, 64, 128]")
    if len({repr(v) for v in values}) != len(values):
        raise ConfigError(f"--{kind} {key}={raw}: a value is listed twice")
    if any(isinstance(v, (list, dict)) for v in values):
        # Optuna's categorical values are scalars; a list value would need its own encoding.
        raise ConfigError(f"--{kind} {key}={raw}: each value must be a number, a string or a boolean")
    return tuple(values)


def _range(kind: str, key: str, raw: str) -> tuple[float, float]:
    low_text, sep, high_text = raw.partition(":")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = None
    if not sep or low is None:
        raise ConfigError(f"--{kind} {key}={raw}: expected LOW:HIGH, e.g. {key}=1e-5:1e-3")
    if low > high:
        raise ConfigError(f"--{kind} {key}={raw}: low {low:g} is above high {high:g}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--{kind} {key}={raw}: a log range needs LOW > 0; got {low:g}")
    return low, high


def parse_space(options: dict[str, list[str]]) -> list[Param]:
    """Every parameter of a sweep, from ``{kind: [KEY=VALUE, ...]}``; each key once."""
    params = [parse_param(kind, text) for kind in KINDS for text in options.get(kind, ())]
    seen: set[str] = set()
    for param in params:
        if param.key in seen:
            raise ConfigError(
                f"{param.key} is searched twice; give each field one --grid, --choice, --uniform or --loguniform"
            )
        seen.add(param.key)
    if not params:
        raise ConfigError("a sweep needs at least one --grid, --choice, --uniform or --loguniform")
    return params


def check_against(params: list[Param], preset: str, overrides: list[str] | tuple = ()) -> None:
    """Every value (each listed one, each range's ends) makes a config the preset accepts."""
    from engine.presets import load_preset

    for param in params:
        candidates = param.values if param.listed else (param.low, param.high)
        for value in candidates:
            load_preset(preset, [*overrides, assignment(param.key, value)])


def assignment(key: str, value: Any) -> str:
    """``KEY=VALUE`` as ``--set`` reads it back (strings quoted as TOML)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        text = repr(value)
    return f"{key}={text}"


def grid_size(params: list[Param]) -> int | None:
    """How many points a full grid has; None when a range makes it unbounded."""
    size = 1
    for param in params:
        if not param.listed:
            return None
        size *= len(param.values)
    return size
