"""engine.run.history: bounded buckets with exact min/max/mean, EMA, RunHistory."""

import math
import random
import sys

import pytest

from engine.run.history import BucketSeries, DebiasedEma, RunHistory, debiased_ema
from engine.run.protocol import EpochEnd, Finished, Oom, Paused, RemedyApplied, RunStarted, Step


def test_few_points_are_kept_exactly():
    series = BucketSeries(capacity=8)
    for step in range(5):
        series.add((step,), step * 2.0)
    assert series.mean() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert series.x() == [0, 1, 2, 3, 4]
    assert series.bucket_size == 1


def test_memory_is_bounded_whatever_the_run_length():
    series = BucketSeries(capacity=64, axes=3)
    for step in range(200_000):
        series.add((step, step / 1000, step * 0.01), math.sin(step))
    assert len(series) <= 64
    assert series.count == 200_000
    assert sum(series.counts()) == 200_000
    sizes = sum(
        sys.getsizeof(column) for column in (series._n, series._min, series._max, series._sum)
    )
    assert sizes < 64 * 8 * 4 + 4096


@pytest.mark.parametrize("count", [1, 63, 64, 65, 1000, 4097])
def test_min_max_mean_match_the_raw_points(count):
    rng = random.Random(count)
    values = [rng.uniform(-5, 5) for _ in range(count)]
    series = BucketSeries(capacity=16)
    for step, value in enumerate(values):
        series.add((step,), value)
    size = series.bucket_size
    for index, (n, low, high, mean, x) in enumerate(
        zip(series.counts(), series.min(), series.max(), series.mean(), series.x(), strict=True)
    ):
        chunk = values[index * size : index * size + n]
        assert n == len(chunk)
        assert low == min(chunk) and high == max(chunk)
        assert mean == pytest.approx(sum(chunk) / n)
        assert x == pytest.approx(index * size + (n - 1) / 2)
    assert all(n == size for n in series.counts()[:-1])


def test_nan_is_skipped_and_counted():
    series = BucketSeries(capacity=4)
    series.add((0,), 1.0)
    series.add((1,), float("nan"))
    assert series.count == 1 and series.skipped == 1


def test_capacity_must_be_even():
    with pytest.raises(ValueError, match="even"):
        BucketSeries(capacity=7)


def test_debiased_ema_starts_at_the_first_value_and_matches_running_form():
    values = [4.0, 2.0, 3.0, 1.0, 1.5]
    smoothed = debiased_ema(values, 0.9)
    assert smoothed[0] == pytest.approx(4.0)
    running = DebiasedEma(0.9)
    assert [running.update(v) for v in values] == pytest.approx(smoothed)
    assert debiased_ema(values, 0.0) == values


def test_weighted_ema_of_buckets_approximates_the_raw_ema():
    rng = random.Random(1)
    values = [1 + 0.1 * rng.random() for _ in range(4096)]
    raw = debiased_ema(values, 0.99)
    series = BucketSeries(capacity=64)
    for step, value in enumerate(values):
        series.add((step,), value)
    buckets = debiased_ema(series.mean(), 0.99, series.counts())
    assert buckets[-1] == pytest.approx(raw[-1], rel=0.02)


def test_run_history_folds_events_and_markers():
    history = RunHistory(capacity=32)
    history.ingest(
        [
            RunStarted(time=100.0, steps_per_epoch=10),
            *(
                Step(
                    time=100.0 + s,
                    step=s,
                    epoch=(s - 1) // 10 + 1,  # as the worker counts: from 1
                    loss=1.0 / s,
                    accuracy=0.5,
                    learning_rate=1e-3,
                    images_per_sec=900.0,
                )
                for s in range(1, 31)
            ),
            EpochEnd(time=110.0, epoch=1, step=10, val_loss=0.3, val_accuracy=0.8),
            Oom(time=131.0, step=31, batch_size=256),
            RemedyApplied(time=132.0, name="halve-batch"),
            Paused(time=133.0),
        ]
    )
    assert history.series["loss"].count == 30
    assert history.series["loss"].x(2)[-1] == pytest.approx(30.0)  # seconds since start
    assert history.series["loss"].x(1)[-1] == pytest.approx(3.0)  # three epochs done
    assert history.val_loss.x(1) == [1.0]  # the end of epoch 1 sits at one epoch done
    assert history.val_loss.mean() == [0.3]
    assert [m.kind for m in history.markers] == ["oom", "remedy_applied", "paused"]


def test_batched_step_lines_and_non_finite_values():
    history = RunHistory()
    history.ingest(
        [
            Step(time=1.0, step=5, epoch=1, loss=[0.5, 0.4, 0.3]),
            Step(time=1.0, step=[6, 7], epoch=[1, 1], loss=[0.2, None], accuracy=[0.5, 0.6]),
            Step(time=math.inf, step=8, epoch=1, loss=math.nan),
        ]
    )
    assert history.series["loss"].count == 4
    assert history.series["loss"].x(0) == [3.0, 4.0, 5.0, 6.0]
    assert history.series["loss"].skipped == 1
    assert history.series["accuracy"].count == 2
    assert history.step == 8


def test_a_million_steps_ingest_in_bounded_memory():
    history = RunHistory(capacity=512)
    batch = [Step(step=s, epoch=1, loss=1.0, time=float(s)) for s in range(100_000)]
    for _ in range(3):
        history.ingest(batch)
    assert len(history.series["loss"]) <= 512


def _steps(first, last, step_every=1):
    return [
        Step(
            time=float(s),
            step=s,
            epoch=s // 1000 + 1,
            loss=2.0 / (1 + s / 500) + ((s * 7919) % 101) / 1000,
        )
        for s in range(first, last + 1, step_every)
    ]


def test_a_thinned_history_weighs_each_step_it_kept_by_the_steps_it_stands_for():
    # What the app gets on attach: one step in 20 of the history, then every live step.
    full, thinned = RunHistory(capacity=64), RunHistory(capacity=64)
    full.ingest(_steps(1, 40_000))
    thinned.ingest(_steps(20, 39_000, step_every=20))
    thinned.ingest(_steps(39_001, 40_000))
    a, b = full.series["loss"], thinned.series["loss"]
    assert b.weight == a.weight - 19  # the first step kept stands for itself
    assert b.bucket_size == a.bucket_size
    # Every bucket spans about as many steps, replayed or live: the curve's density is even.
    assert all(0.75 * b.bucket_size <= n <= 1.3 * b.bucket_size for n in b.counts()[:-1])
    # Each bucket's mean is the mean of the raw steps it spans.
    raw = {e.step: e.loss for e in _steps(1, 40_000)}
    for x, n, y in zip(b.x(), b.counts(), b.mean(), strict=True):
        spanned = [raw[s] for s in range(round(x - n / 2) + 1, round(x + n / 2) + 1) if s in raw]
        assert y == pytest.approx(sum(spanned) / len(spanned), rel=0.03)
    smooth_full = debiased_ema(a.mean(), 0.97, a.counts())
    smooth_thin = debiased_ema(b.mean(), 0.97, b.counts())
    assert smooth_thin[-1] == pytest.approx(smooth_full[-1], rel=0.02)


def test_weights_default_to_one_and_a_rewind_counts_once():
    series = BucketSeries(capacity=4)
    series.add((0,), 1.0)
    series.add((1,), 2.0)
    assert series.counts() == [1, 1]
    series.add((4,), 3.0, weight=3)  # buckets widen to hold it: 4 steps each
    assert series.bucket_size == 4
    assert series.counts() == [1, 4]
    assert series.mean() == [1.0, (2.0 + 3.0 * 3) / 4]
    history = RunHistory()
    history.ingest(_steps(1, 10) + _steps(5, 6))  # a worker resumed from step 4
    assert history.series["loss"].weight == 12


def test_a_resumed_worker_marks_a_restart_unless_a_remedy_already_did():
    history = RunHistory()
    history.ingest(
        [
            RunStarted(time=0.0, steps_per_epoch=100),
            *_steps(1, 50),
            RemedyApplied(time=51.0, name="halve-batch"),
            RunStarted(time=52.0, steps_per_epoch=200, resumed_from_step=50),
            *_steps(51, 80),
            Finished(time=81.0, reason="stopped"),
            RunStarted(time=90.0, steps_per_epoch=200, resumed_from_step=80),
        ]
    )
    assert [(m.kind, m.x[0]) for m in history.markers] == [
        ("remedy_applied", 50.0),
        ("restart", 80.0),
    ]
    assert history.steps_per_epoch == 200


def test_the_best_checkpoint_is_one_marker_at_the_latest_best():
    from engine.run.history import RunHistory
    from engine.run.protocol import BestCheckpoint, Step

    history = RunHistory()
    history.ingest([Step(time=1.0, step=n, epoch=1, loss=1.0) for n in range(1, 11)])
    history.ingest([BestCheckpoint(time=2.0, step=10, epoch=1, metric="val_accuracy", value=0.91)])
    history.ingest([Step(time=3.0, step=n, epoch=2, loss=0.5) for n in range(11, 21)])
    history.ingest([BestCheckpoint(time=4.0, step=20, epoch=2, metric="val_accuracy", value=0.95)])
    best = [m for m in history.markers if m.kind == "best"]
    assert len(best) == 1 and best[0].x[0] == 20 and best[0].label == "best val_accuracy 0.95"
