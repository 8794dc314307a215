"""Text that fits its width on purpose: whole words and whole parts, never a word cut in two.

At 80 columns a line cannot say everything. These helpers choose what to
leave out: the parts that matter least go first (:func:`fit_parts`), and a
sentence that must still shrink ends at a word with ``…`` (:func:`clip_words`).
"""

from __future__ import annotations

import textwrap

from rich.cells import cell_len
from rich.text import Text

ELLIPSIS = "…"


def clip_words(text: str, width: int) -> str:
    """``text`` when it fits in ``width`` cells, else its longest run of whole words and ``…``.

    A first word longer than the width is the one case cut inside a word: nothing else fits.
    """
    if cell_len(text) <= width:
        return text
    room = max(0, width - cell_len(ELLIPSIS))
    words = text.split(" ")
    kept = ""
    for word in words:
        candidate = f"{kept} {word}" if kept else word
        if cell_len(candidate) > room:
            break
        kept = candidate
    if not kept:
        return text[:room] + ELLIPSIS if width else ""
    return kept.rstrip(",;:") + ELLIPSIS


def clip_text(text: Text, width: int) -> Text:
    """:func:`clip_words` for styled text: the styles of the words kept stay."""
    if text.cell_len <= width:
        return text
    kept = clip_words(text.plain, width)
    clipped = text[: len(kept) - len(ELLIPSIS)]
    clipped.append(ELLIPSIS, "dim")
    return clipped


def clip_to_rows(text: str, width: int, rows: int) -> str:
    """``text`` when it wraps into ``rows`` lines of ``width``, else as many whole words as do, and ``…``."""
    lines = textwrap.wrap(text, max(1, width))
    if len(lines) <= rows:
        return text
    kept = lines[: max(0, rows - 1)]
    rest = " ".join(lines[len(kept) :])
    return " ".join([*kept, clip_words(rest, width)])


def fit_parts(parts: list[tuple[int, Text]], width: int, separator: str = "  ") -> Text:
    """Join ``parts`` with ``separator``, leaving out the least important until the line fits.

    Args:
        parts: (importance, text) in the order shown; the lowest importance goes first, and
            of equals the rightmost.
        width: cells available.
        separator: what goes between two parts.
    """
    kept = list(parts)
    while len(kept) > 1 and _length(kept, separator) > width:
        least = min(range(len(kept)), key=lambda i: (kept[i][0], -i))
        kept.pop(least)
    return Text(separator).join(text for _, text in kept)


def _length(parts: list[tuple[int, Text]], separator: str) -> int:
    return sum(text.cell_len for _, text in parts) + cell_len(separator) * (len(parts) - 1)
