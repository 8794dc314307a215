"""The user's-mistake exception, in a module of its own so light modules can raise it.

``engine.config`` (pydantic, ~0.15 s to import) re-exports it; the run store
and the ``convdeck attach`` fast path use it without paying for pydantic.
"""


class ConfigError(ValueError):
    """A user's configuration mistake, phrased as one line for the terminal."""


def seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name``, else ``default``.

    Raises:
        ConfigError: the variable is set to something that is not seconds above 0.
    """
    import os

    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}: got {raw!r}; expected seconds > 0")
    return value
