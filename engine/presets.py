"""Presets: small TOML files that override the defaults of one RunConfig.

Packaged presets ship in the ``presets`` package; a user's own live in
``$CONVDECK_HOME/presets/`` and shadow a packaged one of the same name.
TF-free: the UI lists and validates presets with this module.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import (
    ConfigError,
    RunConfig,
    apply_override,
    config_to_toml,
    load_toml,
    validate_config,
)
from engine.run.store import convdeck_home

DEFAULT_PRESET = "lenet5-digits"


@dataclass
class PresetInfo:
    """One preset as listed: its config, or the error that stops it loading."""

    name: str
    path: Path
    source: str  # "packaged" or "user"
    description: str = ""
    raw: dict = field(default_factory=dict)
    config: RunConfig | None = None
    error: str | None = None

    @property
    def model(self) -> str:
        return self.config.model.arch if self.config else _raw_field(self.raw, "model", "arch")

    @property
    def dataset(self) -> str:
        return self.config.data.dataset if self.config else _raw_field(self.raw, "data", "dataset")


def _raw_field(raw: dict, section: str, key: str) -> str:
    """A field of a preset that failed validation, for listing it anyway."""
    table = raw.get(section)
    return str(table.get(key, "?")) if isinstance(table, dict) else "?"


def packaged_dir() -> Path:
    import presets

    return Path(presets.__file__).parent


def user_dir(home: Path | None = None) -> Path:
    return (home or convdeck_home()) / "presets"


def _preset_files(home: Path | None) -> dict[str, tuple[Path, str]]:
    """Preset name -> (file, source); user files shadow packaged ones."""
    files: dict[str, tuple[Path, str]] = {}
    for directory, source in ((packaged_dir(), "packaged"), (user_dir(home), "user")):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                files[path.stem] = (path, source)
    return files


def _load_info(name: str, path: Path, source: str) -> PresetInfo:
    info = PresetInfo(name=name, path=path, source=source)
    try:
        info.raw = load_toml(path)
        info.description = str(info.raw.get("description", ""))
        info.config = validate_config({**info.raw, "name": name}, source=str(path))
    except ConfigError as error:
        info.error = str(error)
    return info


def list_presets(home: Path | None = None) -> list[PresetInfo]:
    """Every preset, sorted by name; one that fails to load carries its error."""
    return [_load_info(n, p, s) for n, (p, s) in sorted(_preset_files(home).items())]


def preset_names(home: Path | None = None) -> list[str]:
    return sorted(_preset_files(home))


def load_preset(name: str, overrides: list[str] | tuple = (), home: Path | None = None) -> RunConfig:
    """The config a preset describes with ``--set`` overrides applied; ConfigError otherwise."""
    files = _preset_files(home)
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown preset {name!r}{hint}; see `convdeck presets` for the {len(files)} available"
        )
    path, _ = files[name]
    data = {**load_toml(path), "name": name}
    for assignment in overrides:
        apply_override(data, assignment)
    source = f"preset {name}" + (" with --set" if overrides else f" ({path})")
    return validate_config(data, source=source)


def save_user_preset(name: str, config: RunConfig, home: Path | None = None) -> Path:
    """Write ``config`` as the user preset ``name`` and return its path."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"preset name {name!r}: use letters, digits, '-', '_' or '.'")
    directory = user_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(config_to_toml(config.model_copy(update={"name": name})))
    return path
