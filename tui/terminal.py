"""How convdeck speaks to a person at a terminal when something they typed is wrong.

Shared by the CLI (:mod:`tui.cli`) and the fast path (:mod:`tui.launch`) that
opens the TUI without importing click.
"""

from __future__ import annotations

import sys


def one_line(message: str) -> str:
    """A message's words on one line, for a terminal or a log."""
    return " ".join(message.split())


def user_error(message: str) -> None:
    """How convdeck reports a user's mistake: one line on stderr (the caller exits 2)."""
    print(f"convdeck: {one_line(message)}", file=sys.stderr)
