"""Downsampled metric series for charts, in memory that does not grow with a run.

A run may log a million steps; a chart is a hundred columns wide. A
:class:`BucketSeries` keeps a fixed number of buckets, each with the min,
max, mean and count of the points it covers, and when it is full merges
adjacent pairs, so each bucket covers twice as many steps. Memory and
drawing cost are O(buckets) whatever the run length; adding a point is O(1)
amortised. :class:`RunHistory` feeds the series from a run's events.

No UI import: the Textual chart, the runs overlay and benchmarks share it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.run.protocol import BestCheckpoint, EpochEnd, Event, Oom, RemedyApplied, RunStarted, Step

AXES = ("step", "epoch", "time")
"""The x axes every point carries: global step, epochs done (fractional), seconds since start."""

METRICS = ("loss", "accuracy", "learning_rate", "images_per_sec")
"""The per-step metrics a :class:`RunHistory` keeps."""

MARKER_KINDS = ("oom", "remedy_applied", "paused", "resumed", "nan")
"""Event types drawn as vertical lines."""
# A resumed worker's ``run_started`` is drawn as ``restart``.


class BucketSeries:
    """A series of (x..., y) points kept as at most ``capacity`` buckets.

    Every bucket but the last holds ``bucket_size`` points' worth of weight
    (exactly, when every weight is 1). A point's weight is how many raw points
    it stands for: a history replayed thinned keeps one step in twenty, each
    weighing twenty, so buckets, means and smoothing come out as they would
    from every step. The x values of a bucket are weighted means per axis;
    y keeps min, max and the weighted sum. Non-finite y values (a NaN loss)
    are counted in ``skipped`` and left out.

    Args:
        capacity: the most buckets kept; an even number of at least 2.
        axes: how many x coordinates each point carries.
    """

    def __init__(self, capacity: int = 512, axes: int = 1) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"capacity must be an even number >= 2, got {capacity!r}")
        if axes < 1:
            raise ValueError(f"axes must be >= 1, got {axes!r}")
        self.capacity = capacity
        self.axes = axes
        self.bucket_size = 1
        self.count = 0
        """Points added."""
        self.weight = 0
        """Raw points they stand for (the sum of their weights)."""
        self.skipped = 0
        self.last: float | None = None
        self._n: list[int] = []
        self._x: list[list[float]] = [[] for _ in range(axes)]
        self._min: list[float] = []
        self._max: list[float] = []
        self._sum: list[float] = []

    def __len__(self) -> int:
        return len(self._n)

    def add(self, x: Sequence[float], y: float, weight: int = 1) -> None:
        """Add one point: ``x`` has one value per axis; it stands for ``weight`` raw points."""
        if not math.isfinite(y):
            self.skipped += 1
            return
        weight = max(1, int(weight))
        self.count += 1
        self.weight += weight
        self.last = y
        if weight > self.bucket_size:
            # A point that stands for many steps widens the buckets at once; else the
            # first buckets would stand for many times the steps of the later ones.
            self.bucket_size = 1 << (weight - 1).bit_length()
        if self._n and self._n[-1] < self.bucket_size:
            self._add_to_last(x, y, weight)
            return
        if len(self._n) == self.capacity:
            self._merge_pairs()
            if self._n[-1] < self.bucket_size:
                self._add_to_last(x, y, weight)
                return
        self._n.append(weight)
        for axis in range(self.axes):
            self._x[axis].append(float(x[axis]) * weight)
        self._min.append(y)
        self._max.append(y)
        self._sum.append(y * weight)

    def _add_to_last(self, x: Sequence[float], y: float, weight: int) -> None:
        self._n[-1] += weight
        for axis in range(self.axes):
            self._x[axis][-1] += x[axis] * weight
        if y < self._min[-1]:
            self._min[-1] = y
        if y > self._max[-1]:
            self._max[-1] = y
        self._sum[-1] += y * weight

    def _merge_pairs(self) -> None:
        """Halve the bucket count: bucket 2i absorbs bucket 2i+1."""
        n, mins, maxs, sums = self._n, self._min, self._max, self._sum
        self._n = [n[i] + n[i + 1] for i in range(0, len(n), 2)]
        self._min = [min(mins[i], mins[i + 1]) for i in range(0, len(n), 2)]
        self._max = [max(maxs[i], maxs[i + 1]) for i in range(0, len(n), 2)]
        self._sum = [sums[i] + sums[i + 1] for i in range(0, len(n), 2)]
        self._x = [[xs[i] + xs[i + 1] for i in range(0, len(n), 2)] for xs in self._x]
        self.bucket_size *= 2

    def counts(self) -> list[int]:
        """Raw points per bucket (the weights of its points)."""
        return list(self._n)

    def x(self, axis: int = 0) -> list[float]:
        """The (weighted) mean x of each bucket on one axis."""
        return [total / n for total, n in zip(self._x[axis], self._n, strict=True)]

    def mean(self) -> list[float]:
        """The (weighted) mean y of each bucket."""
        return [total / n for total, n in zip(self._sum, self._n, strict=True)]

    def min(self) -> list[float]:
        """The smallest y of each bucket."""
        return list(self._min)

    def max(self) -> list[float]:
        """The largest y of each bucket."""
        return list(self._max)


def debiased_ema(
    values: Sequence[float], smoothing: float, weights: Sequence[int] | None = None
) -> list[float]:
    """Exponential moving average with TensorBoard's start-up debiasing.

    Args:
        values: the points, e.g. bucket means.
        smoothing: 0 (none) to below 1 (heavy); the weight kept per point.
        weights: how many raw points each value stands for (bucket counts);
            a bucket of n points decays the average as n points would.

    Returns:
        One smoothed value per input value.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if smoothing == 0:
        return list(values)
    average, kept, smoothed = 0.0, 1.0, []
    for index, value in enumerate(values):
        decay = smoothing ** (weights[index] if weights else 1)
        average = decay * average + (1 - decay) * value
        kept *= decay
        smoothed.append(average / (1 - kept) if kept < 1 else value)
    return smoothed


class DebiasedEma:
    """The running form of :func:`debiased_ema`, one point at a time."""

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self._average = 0.0
        self._kept = 1.0

    def update(self, value: float) -> float:
        """Take one point and return the smoothed value so far."""
        self._average = self.smoothing * self._average + (1 - self.smoothing) * value
        self._kept *= self.smoothing
        return self._average / (1 - self._kept) if self._kept < 1 else value


@dataclass(frozen=True)
class Marker:
    """Something that happened at a point of the run: an OOM, a remedy, a pause."""

    kind: str
    x: tuple[float, float, float]
    label: str


class RunHistory:
    """Everything a chart draws for one run, fed event by event.

    Args:
        capacity: buckets per series (see :class:`BucketSeries`).
        max_markers: the most recent markers kept.
    """

    def __init__(self, capacity: int = 512, max_markers: int = 256) -> None:
        self.series = {name: BucketSeries(capacity, axes=len(AXES)) for name in METRICS}
        self.val_loss = BucketSeries(capacity, axes=len(AXES))
        self.val_accuracy = BucketSeries(capacity, axes=len(AXES))
        # Each epoch's training loss and accuracy: the means over its examples.
        self.epoch_loss = BucketSeries(capacity, axes=len(AXES))
        self.epoch_accuracy = BucketSeries(capacity, axes=len(AXES))
        self.markers: deque[Marker] = deque(maxlen=max_markers)
        self.start_time: float | None = None
        self.steps_per_epoch: int | None = None
        self.step = 0
        self.epoch = 0
        self._epoch_start_step = 0

    def ingest(self, events: Iterable[Event]) -> None:
        """Take a batch of events (declared, so well-typed: see engine.run.protocol)."""
        for event in events:
            self._ingest_one(event)

    def _ingest_one(self, event: Event) -> None:
        if self.start_time is None and math.isfinite(event.time):
            self.start_time = event.time
        if isinstance(event, Step):
            for single in event.unbatched():
                self._ingest_step(single)
        elif isinstance(event, RunStarted):
            self.steps_per_epoch = _positive_int(event.steps_per_epoch)
            self._mark_restart(event)
        elif isinstance(event, EpochEnd):
            self._ingest_epoch_end(event)
        elif isinstance(event, BestCheckpoint):
            # One line at the best so far: the weights `eval --weights best` and export take.
            self.markers = [m for m in self.markers if m.kind != "best"]
            value = "" if event.value is None else f" {event.value:.4g}"
            self.markers.append(Marker("best", self.position(event), f"best {event.metric}{value}"))
        elif event.type in MARKER_KINDS:
            self.markers.append(Marker(event.type, self.position(event), _marker_label(event)))

    def _mark_restart(self, event: RunStarted) -> None:
        """A worker that resumed the run (after a remedy, a crash, a stop) starts a new stretch."""
        if event.resumed_from_step is None and not self.step:
            return
        here = self.position(event)
        last = self.markers[-1] if self.markers else None
        if last is not None and last.kind == "remedy_applied" and last.x[0] == here[0]:
            return  # the remedy's own marker already shows where the worker switched
        self.markers.append(Marker("restart", here, "restart"))

    def _ingest_step(self, event: Step) -> None:
        epoch = event.epoch if isinstance(event.epoch, int) else self.epoch
        if epoch != self.epoch:
            self.epoch, self._epoch_start_step = epoch, self.step
        step = event.step if isinstance(event.step, int) else self.step + 1
        # A thinned history skips steps: this one stands for those since the last
        # (the first stands for itself: a run may be followed from any step).
        weight = step - self.step if step > self.step and self.series["loss"].count else 1
        self.step = step
        x = self.position(event)
        for name, series in self.series.items():
            value = getattr(event, name)
            if isinstance(value, float):
                series.add(x, value, weight)

    def _ingest_epoch_end(self, event: EpochEnd) -> None:
        # An epoch_end's epoch counts the epochs ended: the point sits at that many.
        done = event.epoch if event.epoch is not None else self.epoch
        x = (float(self.step), float(done), self._elapsed(event))
        if event.val_loss is not None:
            self.val_loss.add(x, event.val_loss)
        if event.val_accuracy is not None:
            self.val_accuracy.add(x, event.val_accuracy)
        # The epoch's training means (Keras' epoch figures), drawn beside validation's.
        if event.loss is not None:
            self.epoch_loss.add(x, event.loss)
        if event.accuracy is not None:
            self.epoch_accuracy.add(x, event.accuracy)

    def position(self, event: Event) -> tuple[float, float, float]:
        """Where an event sits on each x axis (step, epochs done, seconds)."""
        done = self.step - self._epoch_start_step
        per_epoch = self.steps_per_epoch or 0
        fraction = min(1.0, done / per_epoch) if per_epoch else 0.0
        # A step's epoch counts from 1: during epoch 3, two epochs and a fraction are done.
        return (float(self.step), max(0, self.epoch - 1) + fraction, self._elapsed(event))

    def _elapsed(self, event: Event) -> float:
        if self.start_time is None or not math.isfinite(event.time):
            return 0.0
        return max(0.0, event.time - self.start_time)


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _marker_label(event: Event) -> str:
    if isinstance(event, RemedyApplied):
        return event.name or "remedy"
    if isinstance(event, Oom):
        return f"OOM (batch {event.batch_size if event.batch_size is not None else '?'})"
    return event.type
