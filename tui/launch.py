"""The ``convdeck`` console script: the TUI at once for ``convdeck`` and ``convdeck attach
[RUN]``, the CLI for anything else.

Going through :mod:`tui.cli` would first import click, the pydantic config
models and the engine client, about 0.15 s before the first frame that
these two never use. ``attach`` still checks the run exists before any
screen, so a wrong id is one line and exit 2, as from the CLI.
"""

from __future__ import annotations

import sys

from tui.terminal import user_error

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def main() -> None:
    """Open the TUI for ``convdeck`` and a plain ``convdeck attach [RUN]``; else the CLI."""
    args = sys.argv[1:]
    if not args:
        _open_tui(None)
    if args[0] == "attach" and len(args) <= 2 and not any(a.startswith("-") for a in args[1:]):
        from engine.errors import ConfigError
        from engine.run.store import find_run_dir

        try:
            run_dir = find_run_dir(args[1] if len(args) == 2 else None)
        except ConfigError as error:
            user_error(str(error))
            sys.exit(EXIT_USAGE)
        _open_tui(run_dir.name)
    from tui.cli import main as cli_main

    cli_main()


def _open_tui(attach: str | None) -> None:
    from tui.app import run_app

    try:
        sys.exit(run_app() if attach is None else run_app(attach=attach))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
