"""A guard for the app's message handlers, shared by the app and its mixins."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from textual.app import App, ScreenStackError
from textual.css.query import NoMatches


def until_shutdown(handler: Callable) -> Callable:
    """A message handler that may run while the app shuts down: missing widgets are fine then.

    Workers (presets, event tail, commands) post their messages whenever they
    finish; one may arrive after the screen is gone.
    """

    @functools.wraps(handler)
    def guarded(app: App, message: Any) -> Any:
        try:
            return handler(app, message)
        except (NoMatches, ScreenStackError):
            if app.is_running:
                raise
            return None

    return guarded
