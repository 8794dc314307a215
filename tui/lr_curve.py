"""The range test's curve, drawn with plotext: for ``convdeck lr-find`` and the lr-find screen.

The smoothed loss (what the suggestion is chosen on) against the rate on a
log axis, the raw losses faint behind it, the suggestion and the steepest
point as vertical lines. The y axis follows the smoothed loss: a single
wild raw loss at a high rate would otherwise flatten the part that matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from engine.lr_range import Suggestion
from engine.run.lr_find import CurvePoint

SUGGESTED_COLOR, STEEPEST_COLOR = 10, 11
MIN_WIDTH, MIN_HEIGHT = 30, 6
SKIP_END = 5


def draw_curve(points: Sequence[CurvePoint], suggestion: Suggestion | None, width: int, height: int) -> Text:
    """The curve so far in ``width`` x ``height`` cells: a legend line, then the chart.

    Args:
        points: the curve, in order.
        suggestion: marks the suggested and the steepest rate; None while the test runs.
        width: columns.
        height: rows, the legend's included.
    """
    finite = [p for p in points if p.smoothed is not None and p.learning_rate > 0]
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return Text("chart: too small", "dim")
    if len(finite) < 2:
        return Text("waiting for the first steps…", "dim")
    legend = _legend(suggestion)
    legend.truncate(width, overflow="ellipsis")
    return legend + Text("\n") + _plot(finite, suggestion, width, height - 1)


def _plot(points: Sequence[CurvePoint], suggestion: Suggestion | None, width: int, height: int) -> Text:
    from tui.widgets.loss_chart import RAW_COLOR, SMOOTH_COLOR, plotext_module

    plotext = plotext_module()
    figure = plotext.figure
    figure.clear()
    figure.plot_size(width, height)
    figure.theme("convdeck")
    figure.legend(False)
    xs = [math.log10(p.learning_rate) for p in points]
    smoothed = [p.smoothed for p in points]
    # As fastai's plot: the last points (past the divergence) do not set the scale.
    low, high = _y_limits(smoothed[: len(smoothed) - SKIP_END] if len(smoothed) > 4 * SKIP_END else smoothed)
    raw = [(x, p.loss) for x, p in zip(xs, points, strict=True) if p.loss is not None and low <= p.loss <= high]
    if raw:
        _draw(plotext, figure, [x for x, _ in raw], [y for _, y in raw], RAW_COLOR, lines=False)
    _draw(plotext, figure, xs, smoothed, SMOOTH_COLOR, lines=True)
    x_low, x_high = math.floor(min(xs)), max(math.ceil(max(xs)), math.floor(min(xs)) + 1)
    figure.ruler("x").lim(x_low, x_high)
    decades = list(range(x_low, x_high + 1))
    step = max(1, math.ceil(len(decades) / max(2, width // 8)))  # a label needs ~6 columns
    figure.ruler("x").ticks(decades[::step], [f"1e{d}" for d in decades[::step]])
    figure.ruler("y").lim(low, high)
    if suggestion is not None:
        if suggestion.steepest_rate:
            _mark(plotext, figure, suggestion.steepest_rate, STEEPEST_COLOR)
        _mark(plotext, figure, suggestion.learning_rate, SUGGESTED_COLOR)
    return Text.from_ansi(figure.build().string(), no_wrap=True, end="")


def _draw(plotext, figure, xs: list[float], ys: list[float], color: int, lines: bool) -> None:
    signal = figure.signal(xs, ys, marker=plotext.marker("braille", plotext.pixel(foreground=color)))
    if lines:
        signal.lines()
    figure.draw(signal)


def _mark(plotext, figure, rate: float, color: int) -> None:
    figure.line(math.log10(rate), orientation=1, pixel=plotext.pixel(foreground=color))


def _y_limits(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    margin = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return low - margin, high + margin


def _legend(suggestion: Suggestion | None) -> Text:
    from tui.widgets.loss_chart import RAW_COLOR, SMOOTH_COLOR

    legend = Text.assemble(("loss", "bold"), "  ")
    legend.append("━ smoothed  ", f"color({SMOOTH_COLOR})")
    legend.append("⠒ raw  ", f"color({RAW_COLOR})")
    if suggestion is not None:
        legend.append(f"│ suggested {suggestion.learning_rate:.2g}  ", f"color({SUGGESTED_COLOR})")
        if suggestion.steepest_rate:
            legend.append(f"│ steepest {suggestion.steepest_rate:.2g}  ", f"color({STEEPEST_COLOR})")
    legend.append(" x: rate, log", "dim")
    legend.no_wrap = True
    return legend
