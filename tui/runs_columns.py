"""The runs screen's columns: which fit the width, in what order, and how each cell reads.

Chosen on purpose, never cut by the terminal: the columns are ranked, the
first :data:`ALWAYS` are always shown (at 80 columns: id, status, epoch,
validation accuracy and start), and the rest join, in rank, while the whole
row still fits with the run id in full. When even the first ones do not fit, the run
id leaves out words from its middle (``20261202-163701-lenet5-…-ab12``), never half a word.

Pure: no Textual, so the choice is tested without an app.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.run.facts import RunFacts

CELL_PADDING = 1
"""Textual's DataTable pads each cell by one character on either side."""
SCROLLBAR = 2
"""The vertical scrollbar's width, kept free so a long list never pushes a column off."""
MIN_RUN_WIDTH = 22
"""The run id is never shortened below this: its start time and its random tail (``20261202-163701-…-ab12``)."""
ELLIPSIS = "…"


@dataclass(frozen=True)
class RunColumn:
    """One column: its key, header, how a run's cell reads, and whether it is a figure (right-aligned)."""

    key: str
    label: str
    cell: Callable[[RunFacts, float], str]
    numeric: bool = False


def started_text(started: float, now: float) -> str:
    """When a run started, in local time: ``today 16:37``, ``12-02 16:37``, or ``2025-12-02`` in another year."""
    if not started:
        return "—"
    when = datetime.datetime.fromtimestamp(started)
    today = datetime.datetime.fromtimestamp(now).date()
    if when.date() == today:
        return when.strftime("today %H:%M")
    if when.year == today.year:
        return when.strftime("%m-%d %H:%M")
    return when.strftime("%Y-%m-%d")


def epoch_text(run: RunFacts) -> str:
    """``3/12``: the epoch it is in (or ended) of how many; ``3`` when the total is unknown."""
    return f"{run.epoch}/{run.epochs}" if run.epochs else str(run.epoch)


def _figure(value: float | None, places: int = 4) -> str:
    return "—" if value is None else f"{value:.{places}f}"


COLUMNS: tuple[RunColumn, ...] = (
    # In the order they are ranked: the first ALWAYS always show, the rest as the width allows.
    RunColumn("mark", "", lambda run, now: ""),  # the screen draws the mark itself
    RunColumn("run", "run", lambda run, now: run.run_id),
    RunColumn("status", "status", lambda run, now: run.status),
    RunColumn("epoch", "epoch", lambda run, now: epoch_text(run), numeric=True),
    RunColumn("val_acc", "val acc", lambda run, now: _figure(run.val_accuracy), numeric=True),
    RunColumn("started", "started", lambda run, now: started_text(run.started, now)),
    RunColumn("loss", "loss", lambda run, now: _figure(run.last_loss), numeric=True),
    RunColumn("model", "model", lambda run, now: run.model),
    RunColumn("best", "best val", lambda run, now: _figure(run.best_val_accuracy), numeric=True),
    RunColumn("step", "step", lambda run, now: str(run.step), numeric=True),
    RunColumn("preset", "preset", lambda run, now: run.preset),
)
ALWAYS = 6
"""How many of :data:`COLUMNS`, from the first, every width shows."""
DISPLAY_ORDER = ("mark", "run", "preset", "model", "status", "epoch", "step", "loss", "val_acc", "best", "started")
"""Left to right, whichever are chosen."""
BY_KEY = {column.key: column for column in COLUMNS}


@dataclass(frozen=True)
class Layout:
    """The columns chosen for a width, left to right, and the width the run id gets."""

    columns: tuple[RunColumn, ...]
    run_width: int


def choose_layout(cells: Sequence[dict[str, str]], width: int, *, mark_width: int = 1) -> Layout:
    """The columns that fit ``width`` terminal cells for rows whose texts are ``cells``.

    Args:
        cells: per run, each column's text by key (:func:`cell_texts`).
        width: the table's width in terminal cells.
        mark_width: the mark column's width (its glyph).
    """
    natural = {column.key: _natural_width(column, cells) for column in COLUMNS}
    natural["mark"] = mark_width
    available = width - SCROLLBAR
    chosen = list(COLUMNS[:ALWAYS])
    used = sum(natural[c.key] + 2 * CELL_PADDING for c in chosen)
    for column in COLUMNS[ALWAYS:]:
        extra = natural[column.key] + 2 * CELL_PADDING
        if used + extra <= available:
            chosen.append(column)
            used += extra
    run_width = natural["run"]
    if used > available:  # only the first columns are shown: the id gives way
        run_width = max(MIN_RUN_WIDTH, natural["run"] - (used - available))
    ordered = tuple(sorted(chosen, key=lambda column: DISPLAY_ORDER.index(column.key)))
    return Layout(ordered, run_width)


def _natural_width(column: RunColumn, cells: Sequence[dict[str, str]]) -> int:
    return max([len(column.label), *(len(row[column.key]) for row in cells)])


def cell_texts(run: RunFacts, now: float) -> dict[str, str]:
    """Every column's text for ``run``, by key."""
    return {column.key: column.cell(run, now) for column in COLUMNS}


def shorten_at_dash(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, its middle left out between two ``-``, marked by an ellipsis.

    A run id is a start time, the preset and a random tail; the time and the tail
    tell runs apart, so they stay: ``20261202-163701-lenet5-digits-ab12`` in 22
    cells reads ``20261202-163701-…-ab12``, in 30 ``20261202-163701-lenet5-…-ab12``.
    Too narrow for the tail, it keeps whole words from the start; with no ``-`` to
    cut at, it is cut at its end with the ellipsis (an id has no spaces to wrap at).
    """
    if len(text) <= width:
        return text
    room = width - len(ELLIPSIS)
    tail_start = text.rfind("-")
    tail = text[tail_start:] if tail_start > 0 else ""
    if tail and room > len(tail):
        cut = text.rfind("-", 0, room - len(tail))
        if cut > 0:
            return text[: cut + 1] + ELLIPSIS + tail
    cut = text.rfind("-", 0, room)  # no room for the tail: whole words from the start
    if cut > 0:
        return text[: cut + 1] + ELLIPSIS
    return text[: max(0, room)] + ELLIPSIS
