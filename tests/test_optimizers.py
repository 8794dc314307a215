"""engine.train.optimizers: the optimizer a config names, and the rate each update runs at.

Keras evaluates a schedule at ``optimizer.iterations``, the number of
updates already applied, so update ``u`` (1-based) runs at ``schedule(u-1)``.
"""

from __future__ import annotations

import math
from itertools import pairwise

import keras
import pytest

from engine.config import TrainConfig
from engine.train.optimizers import current_learning_rate, make_optimizer, make_schedule

RATE = 1e-2


def rates_of_updates(optimizer, updates: int) -> list[float]:
    """The learning rate each of updates 1..``updates`` uses."""
    rates = []
    for done in range(updates):
        optimizer.iterations.assign(done)
        rates.append(float(current_learning_rate(optimizer)))
    return rates


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_constant_rate_is_a_plain_float():
    train = TrainConfig(learning_rate=RATE)
    assert make_schedule(train, steps_per_epoch=5, total_steps=50) == RATE
    assert rates_of_updates(make_optimizer(train, 5, 50), 3) == pytest.approx([RATE] * 3)


def test_cosine_starts_at_the_rate_and_decays_towards_zero():
    train = TrainConfig(learning_rate=RATE, schedule="cosine")
    total = 20
    rates = rates_of_updates(make_optimizer(train, 5, total), total)
    assert rates[0] == pytest.approx(RATE)
    assert all(a > b for a, b in pairwise(rates))
    assert 0 < rates[-1] < 0.01 * RATE
    expected = [RATE * 0.5 * (1 + math.cos(math.pi * u / total)) for u in range(total)]
    assert rates == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "steps_per_epoch, step_epochs, epochs",
    [(4, 1, 3), (3, 2, 4), (5, 3, 3)],
)
def test_step_schedule_drops_at_the_first_update_of_the_epoch(steps_per_epoch, step_epochs, epochs):
    gamma = 0.5
    train = TrainConfig(
        learning_rate=RATE, schedule="step", step_epochs=step_epochs, step_gamma=gamma
    )
    total = steps_per_epoch * epochs
    rates = rates_of_updates(make_optimizer(train, steps_per_epoch, total), total)
    # Update u belongs to epoch (u - 1) // steps_per_epoch (0-based).
    expected = [
        RATE * gamma ** (((u - 1) // steps_per_epoch) // step_epochs) for u in range(1, total + 1)
    ]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_step_schedule_without_a_boundary_is_constant():
    train = TrainConfig(learning_rate=RATE, schedule="step", step_epochs=10)
    assert make_schedule(train, steps_per_epoch=4, total_steps=8) == RATE


def test_sgd_uses_momentum_and_weight_decay():
    train = TrainConfig(optimizer="sgd", learning_rate=RATE, momentum=0.8, weight_decay=1e-3)
    optimizer = make_optimizer(train, 5, 50)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.8)
    assert optimizer.weight_decay == pytest.approx(1e-3)


def test_sgd_without_weight_decay():
    optimizer = make_optimizer(TrainConfig(optimizer="sgd", weight_decay=0.0), 5, 50)
    assert not optimizer.weight_decay


def test_adamw_and_adam():
    adamw = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=5e-4), 5, 50)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.weight_decay == pytest.approx(5e-4)
    adam = make_optimizer(TrainConfig(optimizer="adam"), 5, 50)
    assert type(adam) is keras.optimizers.Adam


def test_float16_policy_wraps_the_optimizer_in_loss_scaling():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    optimizer = make_optimizer(TrainConfig(learning_rate=RATE, schedule="cosine"), 5, 10)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert rates_of_updates(optimizer, 1) == pytest.approx([RATE])


def test_bfloat16_policy_needs_no_loss_scaling():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    optimizer = make_optimizer(TrainConfig(), 5, 10)
    assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
