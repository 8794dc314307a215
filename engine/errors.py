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


def raise_for_child(returncode: int, stderr: str, what: str) -> None:
    """A convdeck child process's exit as the caller's error; nothing for exit 0.

    Exit 2 is a user's mistake: its last line of stderr (the CLI's ``convdeck: ...``
    line) as a :class:`ConfigError`. Any other failure: a RuntimeError with its last lines.

    Args:
        returncode: the child's exit code.
        stderr: what it wrote there.
        what: the job in words (``evaluation``, ``export``), for the messages.
    """
    lines = stderr.strip().splitlines()
    if returncode == 2:
        raise ConfigError((lines or [f"{what} refused"])[-1].removeprefix("convdeck: "))
    if returncode != 0:
        tail = "\n".join(lines[-5:])
        raise RuntimeError(f"{what} failed (exit {returncode}):\n{tail}")

