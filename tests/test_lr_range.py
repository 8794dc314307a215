"""engine.lr_range: the range test's rates, smoothing, divergence and the valley suggestion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.lr_range import LossSmoother, rate_at, suggest


def fastai_valley(lrs, losses):
    """fastai.callback.schedule.valley (2.7), written out as the reference."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def test_rates_rise_exponentially_from_start_to_end():
    rates = [rate_at(i, 100) for i in range(100)]
    assert rates[0] == pytest.approx(1e-7) and rates[-1] == pytest.approx(10.0)
    ratios = {round(b / a, 9) for a, b in zip(rates, rates[1:], strict=False)}
    assert len(ratios) == 1


def typical_curve(steps=100):
    """A loss that is flat, then falls, then blows up (the shape of a real range test)."""
    rates = [rate_at(i, steps) for i in range(steps)]
    losses = []
    for r in rates:
        x = math.log10(r)
        losses.append(2.3 - 2.0 / (1 + math.exp(-(x + 3.5) * 3)) + (math.exp((x + 0.5) * 4) if x > -1.5 else 0))
    return rates, losses


def test_the_valley_of_a_typical_curve_is_in_its_falling_part():
    rates, losses = typical_curve()
    found = suggest(rates, losses)
    lowest = rates[losses.index(min(losses))]
    falling = [r for r, loss in zip(rates, losses, strict=True) if 0.5 < loss < 2.2 and r < lowest]
    assert falling[0] <= found.learning_rate <= falling[-1]  # where the loss falls, before its minimum
    assert falling[0] <= found.steepest_rate <= falling[-1]
    assert rates[found.valley_index] == found.learning_rate  # indices count in the curve as given


@given(st.lists(st.floats(0.01, 10.0), min_size=30, max_size=120))
def test_the_suggestion_is_fastais_on_any_curve(losses):
    rates = [rate_at(i, len(losses)) for i in range(len(losses))]
    trimmed = slice(len(rates) // 10, len(rates) - 5)
    assert suggest(rates, losses).learning_rate == fastai_valley(rates[trimmed], losses[trimmed])


def test_too_few_points_or_mismatched_lengths():
    with pytest.raises(ValueError, match="usable points"):
        suggest([1e-3, 1e-2], [1.0, 0.5])
    with pytest.raises(ValueError, match="3 rates but 2 losses"):
        suggest([1, 2, 3], [1, 2])


def test_divergence_is_four_times_the_smoothed_minimum():
    smoother = LossSmoother()
    for loss in [2.0] * 20 + [1.0] * 40:
        smoothed = smoother.add(loss)
    assert not smoother.diverged(smoothed)
    assert smoother.diverged(smoother.best * 4.01)
    assert smoother.diverged(float("nan"))
