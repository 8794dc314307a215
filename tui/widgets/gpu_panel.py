"""The GPU panel: per device memory, utilisation, temperature, power, this run's memory.

NVML is polled off the UI thread by a thread worker; the next poll is armed
only when the previous one has reported, so polls never pile up behind a
slow driver. With no driver the panel says why in one row (the whole reason in its tooltip) and shows the
host's CPU and memory instead.

Each poll repaints only the characters that changed, and the sparkline keeps
one cell per :data:`SPARK_SECONDS` (its newest cell moves, the rest stay), so
the panel costs the terminal little while a run trains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import on

from engine.gpu import GIB, GpuDevice, GpuSample, GpuSource, HostStats
from tui.fit import clip_words, fit_parts
from tui.messages import GpuSampled
from tui.widgets.diffed import DiffedWidget

SPARKS = "▁▂▃▄▅▆▇█"
HISTORY_LENGTH = 24
SPARK_SECONDS = 5.0
"""Seconds of polls each sparkline cell averages: 24 cells show the last two minutes."""


class SparkHistory:
    """Utilisation history in cells of ``per_cell`` polls; the newest cell is the running mean.

    Args:
        length: cells kept.
        per_cell: polls averaged into one cell.
    """

    def __init__(self, length: int = HISTORY_LENGTH, per_cell: int = 5) -> None:
        self.cells: deque[float] = deque(maxlen=length)
        self.per_cell = max(1, per_cell)
        self._open: list[float] = []

    def add(self, value: float) -> None:
        """Take one poll's value."""
        if len(self._open) == self.per_cell:
            self._open = []
        self._open.append(value)
        mean = sum(self._open) / len(self._open)
        if len(self._open) == 1:
            self.cells.append(mean)
        else:
            self.cells[-1] = mean

    def __iter__(self) -> Any:
        return iter(self.cells)

    def __len__(self) -> int:
        return len(self.cells)


def sparkline(values: Sequence[float], top: float = 100.0) -> str:
    """One block character per value, scaled to ``top``."""
    last = len(SPARKS) - 1
    return "".join(SPARKS[max(0, min(last, round(v / top * last)))] for v in values)


def bar(fraction: float, width: int) -> Text:
    """A meter ``width`` cells wide; red above 90 %."""
    fraction = max(0.0, min(1.0, fraction))
    filled = round(fraction * width)
    color = "red" if fraction > 0.9 else "yellow" if fraction > 0.7 else "green"
    return Text.assemble(("█" * filled, color), ("░" * (width - filled), "dim"))


def gib(value: int) -> str:
    """Bytes as GiB with one decimal (or MiB below one GiB)."""
    return f"{value / GIB:.1f}G" if value >= GIB else f"{value / (1 << 20):.0f}M"


class GpuPanel(DiffedWidget):
    """Polls a :class:`engine.gpu.GpuSource` once a second and shows every device.

    Args:
        source: where samples come from (NVML, or a recording in tests).
        interval: seconds between the end of one poll and the start of the next.
    """

    BORDER_TITLE = "GPU"

    def __init__(self, source: GpuSource, interval: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.interval = interval
        self.pids: tuple[int, ...] = ()
        self.sample: GpuSample | None = None
        self.devices: list[GpuDevice] = []
        self.polls = 0
        self.in_flight = False
        self.history: dict[int, SparkHistory] = {}
        self._line_count = 0

    def on_mount(self) -> None:
        # The first poll imports pynvml and starts NVML (~0.1 s of the GIL): after the first frame.
        self.call_after_refresh(self.poll)

    def poll(self) -> None:
        """Start one poll in a thread, unless one is already running."""
        if self.in_flight or not self.is_attached:
            return
        self.in_flight = True
        self.run_worker(self._sample_in_thread, thread=True, group="gpu-poll", exit_on_error=False)

    def _sample_in_thread(self) -> None:
        try:
            sample = self.source.sample(self.pids)
        except Exception as error:  # noqa: BLE001 - a broken source must not kill the poll loop
            sample = GpuSample(error=f"GPU poll failed: {error}; retrying")
        self.post_message(GpuSampled(sample))

    @on(GpuSampled)
    def _sampled(self, message: GpuSampled) -> None:
        message.stop()
        self.in_flight = False
        self.polls += 1
        self.show_sample(message.sample)
        self.set_timer(max(self.interval, 0.001), self.poll)

    def show_sample(self, sample: GpuSample) -> None:
        """Take a sample: remember devices and history, set the state classes, redraw."""
        self.sample = sample
        if sample.devices:
            self.devices = list(sample.devices)
            for device in sample.devices:
                level = device.utilization
                if level is None and device.memory_total:
                    level = 100 * device.memory_used / device.memory_total
                self.history.setdefault(device.index, self._new_history()).add(level or 0)
        self.set_class(sample.unavailable is not None, "-no-gpu")
        if self.tooltip != sample.unavailable:
            self.tooltip = sample.unavailable
        self.set_class(sample.error is not None, "-error")
        title = f"GPU · {len(self.devices)}" if self.devices else "GPU"
        if self.border_title != title:
            self.border_title = title
        self._show_lines()

    def on_resize(self) -> None:
        self._show_lines()

    def _new_history(self) -> SparkHistory:
        return SparkHistory(HISTORY_LENGTH, round(SPARK_SECONDS / max(self.interval, 1e-3)))

    def _show_lines(self) -> None:
        if not self.content_size.width:
            return  # not laid out yet: on_resize draws it
        lines = self._lines(self.content_size.width)
        if len(lines) != self._line_count:
            self._line_count = len(lines)
            self.refresh(layout=True)
        self.show(Text("\n").join(lines))

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return max(1, len(self._lines(width)))

    def _lines(self, width: int) -> list[Text]:
        sample = self.sample
        if sample is None:
            return [Text("reading GPUs…", "dim")]
        if sample.unavailable:
            # One row at any width, ending at a word; the whole reason is the panel's tooltip.
            reason = Text(clip_words(sample.unavailable, max(20, width)), "yellow")
            return [reason, *self._host_lines(sample.host, width)]
        lines = [Text(sample.error, "bold red")] if sample.error else []
        dim = sample.error is not None
        return lines + [self._device_line(d, width, dim) for d in self.devices]

    def _device_line(self, device: GpuDevice, width: int, stale: bool) -> Text:
        """One row a device; the figures that matter least go first when it is narrow (fit_parts)."""
        wide = width >= 70
        name = device.name.removeprefix("NVIDIA ").removeprefix("Tesla ")
        room = (14 if wide else 9) - (4 if device.mig else 0)
        name = name[:room] + (" MIG" if device.mig else "")
        total = device.memory_total or 1
        memory = bar(device.memory_used / total, 10 if wide else 6)
        memory.append(f" {gib(device.memory_used)}/{gib(device.memory_total)}")
        util = "  -%" if device.utilization is None else f"{device.utilization:>3}%"
        parts = [
            (10, Text.assemble((f"{device.index} ", "bold"), (f"{name:<{14 if wide else 9}}", "cyan"))),
            (9, memory),
            (8, Text(util, "bold")),
        ]
        if device.temperature is not None:
            parts.append((4, Text(f"{device.temperature}°C")))
        if wide and device.power is not None:
            parts.append((3, Text(f"{device.power:.0f}W")))
        if device.process_memory is not None:
            parts.append((7, Text(f"run {gib(device.process_memory)}", "magenta")))
        if wide:
            parts.append((2, Text(sparkline(self.history.get(device.index, ())), "green")))
        line = fit_parts(parts, width, " ")
        if stale:
            line.stylize("dim")
        line.no_wrap = True
        line.overflow = "ellipsis"
        return line

    def _host_lines(self, host: HostStats | None, width: int) -> list[Text]:
        if host is None:
            return []
        memory = Text("mem ")
        memory.append_text(bar(host.memory_used / (host.memory_total or 1), 10 if width >= 70 else 6))
        memory.append(f" {gib(host.memory_used)}/{gib(host.memory_total)}")
        parts = [
            (10, Text.assemble(("host ", "bold"), f"CPU {host.cpu_percent:>3.0f}%")),
            (2, Text(f"of {host.cpu_count}")),
            (9, memory),
        ]
        if host.process_memory is not None:
            parts.append((8, Text(f"run {gib(host.process_memory)}", "magenta")))
        line = fit_parts(parts, width, " ")  # whole figures: the core count goes first
        line.no_wrap = True
        return [line]
