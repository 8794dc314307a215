"""The chart's keys (s, l, t, v), shared by the main screen and the compare screen."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding

from tui.widgets.loss_chart import LossChart


def chart_bindings(id_prefix: str, show: bool) -> list[Binding]:
    """The chart's bindings, with ids ``{id_prefix}.smoothing`` and so on."""
    return [
        Binding(
            "s",
            "smoothing",
            "Smoothing",
            show=show,
            tooltip="Cycle the loss smoothing",
            id=f"{id_prefix}.smoothing",
        ),
        Binding(
            "l",
            "log_scale",
            "Log scale",
            show=show,
            tooltip="Linear or logarithmic y axis",
            id=f"{id_prefix}.log-scale",
        ),
        Binding(
            "t",
            "x_axis",
            "X axis",
            show=show,
            tooltip="X axis: step, epoch or wall time",
            id=f"{id_prefix}.x-axis",
        ),
        Binding(
            "v",
            "view",
            "View",
            show=show,
            tooltip="Chart: loss, accuracy, learning rate, images/s",
            id=f"{id_prefix}.view",
        ),
    ]


class ChartKeys:
    """The actions of :func:`chart_bindings`, for an App or a Screen with one LossChart."""

    query_one: Any

    def action_smoothing(self) -> None:
        """Cycle the smoothing of the loss curve."""
        self.query_one(LossChart).cycle_smoothing()

    def action_log_scale(self) -> None:
        """Linear or logarithmic y axis."""
        self.query_one(LossChart).toggle_log_scale()

    def action_x_axis(self) -> None:
        """X axis: step, epoch, wall time."""
        self.query_one(LossChart).cycle_x_axis()

    def action_view(self) -> None:
        """Chart: loss, accuracy, learning rate, images/s."""
        self.query_one(LossChart).cycle_view()
