"""The user's-mistake exception, in a module of its own so light modules can raise it.

``engine.config`` (pydantic, ~0.15 s to import) re-exports it; the run store
and the ``convdeck attach`` fast path use it without paying for pydantic.
"""


class ConfigError(ValueError):
    """A user's configuration mistake, phrased as one line for the terminal."""
