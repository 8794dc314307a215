"""The user's own settings: ``$CONVDECK_HOME/convdeck.toml``, one table a subject.

``[notify]`` (engine.run.notify) and ``[queue]`` (engine.run.queue_runner) are
read from here; a missing file means the defaults.
"""

from __future__ import annotations

from pathlib import Path

from engine.run.store import convdeck_home

SETTINGS_FILE = "convdeck.toml"


def settings_path(home: Path | None = None) -> Path:
    return (home or convdeck_home()) / SETTINGS_FILE


def user_settings(home: Path | None = None) -> dict:
    """The whole file as a dict; {} when there is none. ConfigError (one line) for bad TOML."""
    from engine.config import load_toml

    path = settings_path(home)
    return load_toml(path) if path.exists() else {}
