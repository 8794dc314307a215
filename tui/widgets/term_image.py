"""Pictures in the terminal: which of textual-image's widgets draws them here.

textual-image chooses its renderer when first imported, by asking the
terminal (does it speak Sixel? Kitty's graphics protocol?) and reading the
answer from stdin. Inside a running Textual app that answer would land in
Textual's input thread as key presses; asking before the first frame would
cost every launch ~0.3 s (numpy, and a 0.1 s wait on terminals that do not
answer) for a view few sessions open. So convdeck imports it with the
question unasked and chooses from the environment instead:
``CONVDECK_IMAGES`` names a renderer, else kitty gets its graphics protocol,
terminals known to speak Sixel get Sixel, and everything else (tmux and
screen included: they do not pass graphics through by default) gets
Unicode half-blocks, which work everywhere colour does.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator, Mapping

from textual.widget import Widget

IMAGES_ENV = "CONVDECK_IMAGES"
RENDERERS = ("auto", "tgp", "sixel", "halfcell", "unicode")
"""auto: from the terminal; tgp: Kitty's graphics protocol; sixel; halfcell: coloured
half-blocks (two pixels a cell); unicode: grey shades, for terminals without colour."""
SIXEL_TERM_PROGRAMS = frozenset({"WezTerm", "iTerm.app", "mlterm"})
SIXEL_TERMS = ("foot", "mlterm", "contour", "yaft")


def renderer_setting(environ: Mapping[str, str] = os.environ) -> str:
    """The renderer the user asked for in ``CONVDECK_IMAGES`` ("auto" when unset).

    Raises:
        ValueError: a name that is not one of :data:`RENDERERS` (the message says which are).
    """
    value = environ.get(IMAGES_ENV, "").strip().lower() or "auto"
    if value not in RENDERERS:
        raise ValueError(f"{IMAGES_ENV}={value!r}: expected one of {', '.join(RENDERERS)}")
    return value


def detect_renderer(environ: Mapping[str, str] = os.environ) -> str:
    """The best renderer this terminal is known to draw, from its environment alone."""
    if environ.get("TMUX") or environ.get("STY"):
        return "halfcell"
    term, program = environ.get("TERM", ""), environ.get("TERM_PROGRAM", "")
    if "kitty" in term or environ.get("KITTY_WINDOW_ID"):
        return "tgp"
    if program in SIXEL_TERM_PROGRAMS or term.startswith(SIXEL_TERMS) or environ.get("KONSOLE_VERSION"):
        return "sixel"
    return "halfcell"


def resolve_renderer(renderer: str) -> str:
    """``renderer`` itself, or for "auto" the one :func:`detect_renderer` picks."""
    return detect_renderer() if renderer == "auto" else renderer


def image_widget_class(renderer: str) -> type[Widget]:
    """textual-image's widget for ``renderer`` (one of :data:`RENDERERS`, "auto" resolved here)."""
    with _terminal_unasked():
        import textual_image.widget as image_widgets
    classes = {
        "tgp": image_widgets.TGPImage,
        "sixel": image_widgets.SixelImage,
        "halfcell": image_widgets.HalfcellImage,
        "unicode": image_widgets.UnicodeImage,
    }
    return classes[resolve_renderer(renderer)]


@contextlib.contextmanager
def _terminal_unasked() -> Iterator[None]:
    """Import textual-image without it questioning the terminal (see the module's docstring).

    It asks only when ``sys.__stdout__`` is a terminal, so for the import it
    sees a buffer instead. Textual writes to ``sys.__stderr__`` and is not disturbed.
    """
    if "textual_image.widget" in sys.modules:
        yield
        return
    _cell_size_from_kernel()
    real_stdout = sys.__stdout__
    sys.__stdout__ = io.StringIO()
    try:
        yield
    finally:
        sys.__stdout__ = real_stdout


def _cell_size_from_kernel() -> None:
    """A cell's size in pixels, for Sixel and Kitty images, from the tty's window size.

    textual-image reads it from ``TEXTUAL_CELL_WIDTH``/``HEIGHT`` when it cannot
    ask (as textual-serve sets them); the kernel knows it without a question.
    Where it does not (some terminals report no pixels), textual-image assumes 10 x 20.
    """
    import fcntl
    import struct
    import termios

    try:
        packed = fcntl.ioctl(sys.__stdout__.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
    except (OSError, ValueError, AttributeError):
        return
    rows, columns, width, height = struct.unpack("HHHH", packed)
    if rows and columns and width and height:
        os.environ.setdefault("TEXTUAL_CELL_WIDTH", str(width // columns))
        os.environ.setdefault("TEXTUAL_CELL_HEIGHT", str(height // rows))
