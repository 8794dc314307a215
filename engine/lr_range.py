"""The learning-rate range test, the TF-free half: the rates to try and what the curve suggests.

The test (Smith 2015, fastai's ``lr_find``) raises the rate exponentially
from ``start`` to ``end`` over ``steps`` steps, one batch each, and stops
once the smoothed loss passes ``DIVERGE_FACTOR`` times its minimum. The
suggestion follows fastai's "valley" rule (its default since fastai#3408):
take the longest run of the curve that keeps falling, and pick a point
a little past its middle. It holds up on noisy losses, where the steepest
point (also reported) jumps around (Lightning#1767, #21141).

The worker side (engine.train.lr_find) trains; this module decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_START, DEFAULT_END, DEFAULT_STEPS = 1e-7, 10.0, 100
DIVERGE_FACTOR = 4.0
SMOOTHING = 0.98  # fastai's debiased EMA of the loss


def rate_at(step: int, steps: int, start: float = DEFAULT_START, end: float = DEFAULT_END) -> float:
    """The rate of step ``step`` (0-based) of ``steps``: exponential from ``start`` to ``end``."""
    if steps < 2:
        return start
    return start * (end / start) ** (step / (steps - 1))


class LossSmoother:
    """Debiased exponential moving average, and the divergence test on it."""

    def __init__(self, beta: float = SMOOTHING) -> None:
        self.beta = beta
        self._average = 0.0
        self._count = 0
        self.best = math.inf

    def add(self, loss: float) -> float:
        """The smoothed loss after ``loss``."""
        self._count += 1
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta**self._count)
        self.best = min(self.best, smoothed)
        return smoothed

    def diverged(self, smoothed: float) -> bool:
        """Past ``DIVERGE_FACTOR`` times the best so far, or no longer a number."""
        return not math.isfinite(smoothed) or smoothed > DIVERGE_FACTOR * self.best


@dataclass(frozen=True)
class Suggestion:
    """What the curve says: the valley's rate (the suggestion) and the steepest point's.

    The indices count in the curve as given, so a chart can mark those points.
    """

    learning_rate: float
    valley_index: int
    steepest_rate: float | None
    steepest_index: int | None


def suggest(rates: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """The "valley" suggestion for a range-test curve (smoothed losses, one per rate).

    Raises:
        ValueError: fewer than 4 finite points, or rates and losses of different lengths.
    """
    if len(rates) != len(losses):
        raise ValueError(f"{len(rates)} rates but {len(losses)} losses")
    # As fastai: the first tenth (the loss barely moves yet) and the last five
    # points (divergence, already past the stop) are left out of the search.
    trimmed = slice(len(rates) // 10, len(rates) - 5 if len(rates) > 20 else len(rates))
    kept = [i for i in range(len(rates))[trimmed] if math.isfinite(losses[i]) and rates[i] > 0]
    if len(kept) < 4:
        raise ValueError(f"the curve has {len(kept)} usable points; at least 4 are needed")
    valley = kept[_valley([losses[i] for i in kept])]
    steepest = _steepest([rates[i] for i in kept], [losses[i] for i in kept])
    steepest = kept[steepest] if steepest is not None else None
    return Suggestion(
        learning_rate=rates[valley],
        valley_index=valley,
        steepest_rate=rates[steepest] if steepest is not None else None,
        steepest_index=steepest,
    )


def _valley(losses: Sequence[float]) -> int:
    """fastai's valley: the longest decreasing subsequence, a point 1/2 of a third past its start.

    The longest run of falling losses spans the region where the model
    learns; its first third is still slow, its last third near divergence.
    """
    count = len(losses)
    run_length = [1] * count
    best_end = 0
    best_start = 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and run_length[i] < run_length[j] + 1:
                run_length[i] = run_length[j] + 1
            # Inside the inner loop, as fastai does: the start is fixed when i first
            # becomes the longest run's end, which keeps the same suggestions as fastai.
            if run_length[best_end] < run_length[i]:
                best_end = i
                best_start = best_end - run_length[best_end]
    third = (best_end - best_start) / 3
    return max(0, min(count - 1, best_start + int(third) + int(third / 2)))


def _steepest(rates: Sequence[float], losses: Sequence[float]) -> int | None:
    """The point where the loss falls fastest against log(rate)."""
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(rates[i + 1]) - math.log(rates[i]))
        for i in range(len(rates) - 1)
        if rates[i + 1] != rates[i]
    ]
    if not slopes:
        return None
    return min(range(len(slopes)), key=slopes.__getitem__)
