"""The ``convdeck`` console script: the TUI at once when there is no command, else the CLI.

``convdeck`` alone opens the TUI. Going through :mod:`tui.cli` would first
import click, the pydantic config models and the engine client, about 0.1 s
before the first frame that the bare command never uses.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    """Open the TUI for a bare ``convdeck``; hand anything else to the CLI."""
    if len(sys.argv) == 1:
        from tui.app import run_app

        try:
            sys.exit(run_app())
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
    from tui.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
