"""The loss chart: plotext drawn into a Textual widget, at a bounded rate.

It draws from a :class:`engine.run.history.RunHistory`, whose series are
downsampled to a fixed number of buckets, so a redraw costs the same at step
100 and at step 1,000,000. New data only marks the chart dirty; a timer
redraws at most ``max_fps`` times a second, and data alone redraws it at
most once per ``data_interval`` seconds.

Slow ssh links pay per byte, so a redraw sends only the cells that changed
(:class:`tui.widgets.diffed.DiffedWidget`), and the axes move in steps
(:func:`nice_limits`): while a run trains steadily only the tip of the curve
changes, not every tick label and pixel.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.text import Text

from engine.run.history import AXES, BucketSeries, RunHistory, debiased_ema
from tui.widgets.diffed import DiffedWidget

VIEWS = {
    "loss": "loss",
    "accuracy": "accuracy",
    "learning_rate": "learning rate",
    "images_per_sec": "images/s",
}
SMOOTHINGS = (0.0, 0.6, 0.9, 0.97)
X_LABELS = {"step": "step", "epoch": "epoch", "time": "minutes"}

RAW_COLOR, SMOOTH_COLOR, VAL_COLOR, EPOCH_COLOR = 8, 14, 11, 15
OVERLAY_COLORS = (13, 10, 12, 9)
MARKER_COLORS = {
    "oom": 9,
    "remedy_applied": 10,
    "restart": 10,
    "paused": 11,
    "resumed": 12,
    "nan": 13,
    "best": 14,
}
MARKER_NAMES = {
    "oom": "oom",
    "remedy_applied": "remedy",
    "restart": "restart",
    "paused": "pause",
    "resumed": "resume",
    "nan": "nan",
    "best": "best",
}
NICE_MANTISSAS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
"""Upper limits of the x axis: the curve fills at least ~80 % of the width, and the
axis moves only when the run outgrows one (then the whole chart is sent once)."""
TICK_MANTISSAS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_ceiling(value: float) -> float:
    """The smallest m * 10**k (m in :data:`NICE_MANTISSAS`) at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in NICE_MANTISSAS if m * power >= value * (1 - 1e-12))


def nice_limits(low: float, high: float, log_scale: bool = False) -> tuple[float, float]:
    """Y limits around [low, high] on a coarse grid, so small changes keep them still."""
    if log_scale:
        low, high = max(low, 1e-8), max(high, 1e-8)
        return 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high) + 1e-12)
    span = high - low or abs(high) or 1.0
    step = 10 ** math.floor(math.log10(span)) / 2
    bottom, top = math.floor(low / step) * step, math.ceil(high / step) * step
    return (bottom, top) if top > bottom else (bottom, bottom + step)


def nice_ticks(low: float, high: float, most: int) -> list[float]:
    """Round tick positions in [low, high], at most ``most`` of them."""
    span = high - low
    if span <= 0 or most < 2:
        return [low]
    raw = span / (most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in TICK_MANTISSAS if m * power >= raw * (1 - 1e-12))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def log_ticks(low: float, high: float, most: int) -> list[float]:
    """Tick values for a log axis from ``low`` to ``high`` (powers of ten): every decade,
    with 2 and 5 between them (or 3) while there is room, thinned to at most ``most``."""
    first, last = round(math.log10(low)), round(math.log10(high))
    decades = [10.0**power for power in range(first, last + 1)]
    for mantissas in ((2.0, 5.0), (3.0,)):
        ticks = sorted(decades + [m * d for d in decades[:-1] for m in mantissas])
        if len(ticks) <= most:
            return ticks
    stride = math.ceil(len(decades) / max(1, most))
    return decades[::stride]


def log_tick_label(value: float) -> str:
    """``1e-3``, ``3e-4``, ``0.01``, ``0.5``, ``20``, ``1e5``: short, and exact for 1, 2, 3, 5 x 10^k."""
    if 0.01 <= value < 1e4:
        return f"{value:g}"
    mantissa, power = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(power)}"


def tick_label(value: float) -> str:
    """``250``, ``1.5k``, ``2M``, ``0.25``."""
    magnitude = abs(value)
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.4g}{suffix}"
    return f"{value:.4g}"


_plotext: Any = None


def plotext_module() -> Any:
    """plotext, imported on the first plot: it costs ~0.1 s, which the first frame need not pay."""
    global _plotext
    if _plotext is None:
        import plotext

        plotext.add_theme("convdeck", text=8, grid=8, sequence=[RAW_COLOR, SMOOTH_COLOR, VAL_COLOR])
        # plotext clamps plots to the terminal it sees; here the widget decides the size.
        plotext.terminal.limit(False, False)
        _plotext = plotext
    return _plotext


class LossChart(DiffedWidget, can_focus=True):
    """A chart of one run (or several overlaid) with view, smoothing, scale and x-axis settings.

    Args:
        max_fps: the most redraws per second.
        data_interval: the least seconds between redraws caused by new data alone.
    """

    def __init__(self, max_fps: float = 4.0, data_interval: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_fps = max_fps
        self.data_interval = data_interval
        self.history: RunHistory | None = None
        self.overlays: list[tuple[str, RunHistory]] = []
        self.view = "loss"
        self.smoothing = 0.9
        self.log_scale = False
        self.x_axis = "step"
        self.placeholder = "No run yet. Pick a preset and press Enter."
        self.hold = False
        """While a history is replayed, data redraws only the first curve (keys still redraw);
        the app clears it and asks for one redraw when the history is all read."""
        self.redraws = 0
        self.plots = 0
        """Redraws that drew curves (not the placeholder): what costs."""
        self._dirty = True
        self._urgent = True
        self._last_draw = 0.0
        self._plotted = False

    def on_mount(self) -> None:
        self.set_interval(1 / self.max_fps, self._tick)

    def on_resize(self) -> None:
        if self.hold and self._plotted:
            # A history half read: the new size waits with the rest (see hold).
            self._dirty = True
            return
        self.redraw()

    def set_placeholder(self, text: str) -> None:
        """What the chart says while it has no points to draw."""
        if text != self.placeholder:
            self.placeholder = text
            if not self._has_points():  # else it is not on screen: nothing to redraw
                self.mark_dirty(urgent=True)

    def _has_points(self) -> bool:
        runs = ([self.history] if self.history else []) + [h for _, h in self.overlays]
        return any(history.series[self.view].count for history in runs)

    def set_history(self, history: RunHistory | None, overlays: list | None = None) -> None:
        """Draw ``history`` (None: the placeholder), with optional ``(label, history)`` overlays."""
        self.history = history
        self.overlays = list(overlays or [])
        self._plotted = False
        self.mark_dirty(urgent=True)

    def mark_dirty(self, urgent: bool = False) -> None:
        """Ask for a redraw; ``urgent`` (a key press) redraws at once, data waits its turn."""
        self._dirty = True
        urgent = urgent or not self._plotted  # the first curve should not wait its turn
        if urgent and not self._urgent and self.is_attached:
            self.call_next(self._tick)
        self._urgent = self._urgent or urgent

    def cycle_view(self) -> str:
        """Loss, accuracy, learning rate, images/s, and round again."""
        names = list(VIEWS)
        self.view = names[(names.index(self.view) + 1) % len(names)]
        self.mark_dirty(urgent=True)
        return self.view

    def cycle_smoothing(self) -> float:
        """Step through the smoothing weights."""
        index = SMOOTHINGS.index(self.smoothing) if self.smoothing in SMOOTHINGS else 0
        self.smoothing = SMOOTHINGS[(index + 1) % len(SMOOTHINGS)]
        self.mark_dirty(urgent=True)
        return self.smoothing

    def toggle_log_scale(self) -> bool:
        """Linear or logarithmic y axis."""
        self.log_scale = not self.log_scale
        self.mark_dirty(urgent=True)
        return self.log_scale

    def cycle_x_axis(self) -> str:
        """Step, epoch, wall time."""
        self.x_axis = AXES[(AXES.index(self.x_axis) + 1) % len(AXES)]
        self.mark_dirty(urgent=True)
        return self.x_axis

    def _tick(self) -> None:
        if not self._dirty or (self.hold and not self._urgent):
            return
        now = time.monotonic()
        if self._urgent or now - self._last_draw >= self.data_interval:
            self.redraw()

    def redraw(self) -> None:
        """Draw now (the timer calls this; tests may too)."""
        self._dirty = self._urgent = False
        self._last_draw = time.monotonic()
        self.redraws += 1
        self.show(self._draw(self.size.width, self.size.height))

    def _draw(self, width: int, height: int) -> Text:
        if width < 20 or height < 5:
            return Text("chart: too small", "dim")
        runs = ([("", self.history)] if self.history else []) + self.overlays
        if not runs or not any(h.series[self.view].count for _, h in runs):
            # Mid-height, centred by hand: a Text still, so tests and the diff read it as one.
            lines = [line.center(width).rstrip() for line in self.placeholder.splitlines()]
            return Text("\n" * ((height - 1) // 2) + "\n".join(lines), "dim")
        self._plotted = True
        self.plots += 1
        try:
            plot = self._plot(runs, width, height - 1)
        except Exception as error:  # noqa: BLE001 - a chart bug must never take the app down
            return Text(f"chart error: {error}", "red")
        legend = self._legend(runs)
        legend.truncate(width, overflow="ellipsis")
        return legend + Text("\n") + plot

    def _plot(self, runs: list[tuple[str, RunHistory]], width: int, height: int) -> Text:
        plotext = plotext_module()
        figure = plotext.figure
        figure.clear()
        figure.plot_size(width, height)
        figure.theme("convdeck")
        figure.legend(False)
        axis = AXES.index(self.x_axis)
        overlaid = len(runs) > 1
        for index, (_, history) in enumerate(runs):
            colors = (OVERLAY_COLORS[index % len(OVERLAY_COLORS)],) * 2 if overlaid else None
            self._plot_series(figure, history.series[self.view], axis, colors, overlaid)
            for points, marker, color in self._epoch_points(history):
                if points.count and not overlaid:
                    self._plot_points(figure, points, axis, marker, color)
        x_limits = self._set_axes(figure, runs, axis, width, height)
        if not overlaid and self.history is not None and x_limits is not None:
            self._plot_markers(figure, self.history, axis, x_limits)
        return Text.from_ansi(figure.build().string(), no_wrap=True, end="")

    def _set_axes(
        self, figure: Any, runs: list[tuple[str, RunHistory]], axis: int, width: int, height: int
    ) -> tuple[float, float] | None:
        """Limits on a coarse grid and round ticks: steady training moves only the curve's tip.

        Returns:
            The x limits, or None when there is nothing to draw.
        """
        xs: list[float] = []
        ys: list[float] = []
        for _, history in runs:
            series = history.series[self.view]
            if series.count:
                xs += self._xs(series, axis)
                ys += self._ys(series.mean())
            for points, _, _ in self._epoch_points(history):
                if points.count and len(runs) == 1:
                    ys += self._ys(points.mean())
        if not xs:
            return None
        x_low = 0.0 if min(xs) >= 0 else min(xs)
        x_high = nice_ceiling(max(xs) * 1.01)  # a little room: the newest point is off the frame
        figure.ruler("x").lim(x_low, x_high)
        ticks = nice_ticks(x_low, x_high, max(2, width // 10))
        figure.ruler("x").ticks(ticks, [tick_label(t) for t in ticks])
        if self.log_scale:
            # The curves are drawn in log10 (see _ys): the axis is linear in the exponent, with
            # ticks at decades and 2, 5 between, labelled as values (plotext's own log labels
            # read 0.31623, and it ignores limits once ticks are set on a log ruler).
            low, high = nice_limits(10 ** min(ys), 10 ** max(ys), log_scale=True)
            values = log_ticks(low, high, max(2, height // 2))
            figure.ruler("y").lim(math.log10(low), math.log10(high))
            figure.ruler("y").ticks([math.log10(v) for v in values], [log_tick_label(v) for v in values])
        else:
            figure.ruler("y").lim(*nice_limits(min(ys), max(ys)))
        return x_low, x_high

    def _validation(self, history: RunHistory) -> BucketSeries | None:
        return {"loss": history.val_loss, "accuracy": history.val_accuracy}.get(self.view)

    def _epoch_means(self, history: RunHistory) -> BucketSeries | None:
        """The epochs' training means, shown on the epoch axis, where a point stands for an epoch."""
        if self.x_axis != "epoch":
            return None
        return {"loss": history.epoch_loss, "accuracy": history.epoch_accuracy}.get(self.view)

    def _epoch_points(self, history: RunHistory) -> list[tuple[BucketSeries, str, int]]:
        """The per-epoch point series to draw, with their marker and colour."""
        found = [
            (self._validation(history), "●", VAL_COLOR),
            (self._epoch_means(history), "◆", EPOCH_COLOR),
        ]
        return [(series, marker, color) for series, marker, color in found if series is not None]

    def _xs(self, series: BucketSeries, axis: int) -> list[float]:
        xs = series.x(axis)
        return [x / 60 for x in xs] if self.x_axis == "time" else xs

    def _ys(self, values: list[float]) -> list[float]:
        """The values as drawn: their log10 on a log scale (what is not positive at 1e-8)."""
        return [math.log10(max(v, 1e-8)) for v in values] if self.log_scale else values

    def _plot_series(
        self, figure: Any, series: BucketSeries, axis: int, colors: Any, overlaid: bool
    ) -> None:
        xs, means = self._xs(series, axis), series.mean()
        raw_color, smooth_color = colors or (RAW_COLOR, SMOOTH_COLOR)
        if not overlaid or self.smoothing == 0:
            self._line(figure, xs, self._ys(means), raw_color)
        if self.smoothing > 0:
            smoothed = debiased_ema(means, self.smoothing, series.counts())
            self._line(figure, xs, self._ys(smoothed), smooth_color)

    def _line(self, figure: Any, xs: list[float], ys: list[float], color: int) -> None:
        plotext = plotext_module()
        signal = figure.signal(
            xs, ys, marker=plotext.marker("braille", plotext.pixel(foreground=color))
        )
        signal.lines()
        figure.draw(signal)

    def _plot_points(self, figure: Any, series: BucketSeries, axis: int, symbol: str, color: int) -> None:
        plotext = plotext_module()
        marker = plotext.marker(symbol, plotext.pixel(foreground=color))
        figure.draw(figure.signal(self._xs(series, axis), self._ys(series.mean()), marker=marker))

    def _plot_markers(
        self, figure: Any, history: RunHistory, axis: int, limits: tuple[float, float]
    ) -> None:
        plotext = plotext_module()
        low, high = limits
        for marker in history.markers:
            x = marker.x[axis] / 60 if self.x_axis == "time" else marker.x[axis]
            if low <= x <= high:
                color = MARKER_COLORS.get(marker.kind, 15)
                figure.line(x, orientation=1, pixel=plotext.pixel(foreground=color))

    def _legend(self, runs: list[tuple[str, RunHistory]]) -> Text:
        legend = Text.assemble((VIEWS[self.view], "bold"), "  ")
        if len(runs) > 1:
            for index, (label, _) in enumerate(runs):
                color = OVERLAY_COLORS[index % len(OVERLAY_COLORS)]
                legend.append(f"━ {label}  ", f"color({color})")
        else:
            legend.append("━ raw  ", f"color({RAW_COLOR})")
            if self.smoothing:
                legend.append(f"━ smoothed {self.smoothing:g}  ", f"color({SMOOTH_COLOR})")
            if self.view in ("loss", "accuracy"):
                legend.append("● val  ", f"color({VAL_COLOR})")
                if self.x_axis == "epoch":
                    legend.append("◆ epoch mean  ", f"color({EPOCH_COLOR})")
            kinds = {m.kind for m in self.history.markers} if self.history else set()
            for kind in MARKER_COLORS:
                if kind in kinds:
                    legend.append(f"│ {MARKER_NAMES[kind]} ", f"color({MARKER_COLORS[kind]})")
        legend.append(f" x: {X_LABELS[self.x_axis]}", "dim")
        legend.append("  log" if self.log_scale else "", "dim")
        legend.no_wrap = True
        legend.overflow = "ellipsis"
        return legend
