"""How many steps one tf.function call runs: sized from measured step time, so controls answer fast.

Controls (pause, stop, a remedy) are obeyed between calls. These runs have
steps slow enough (LeNet-5 on large synthetic images, a few tenths of a
second a step on a CPU) that a call of a fixed handful of steps would keep
a stop waiting for seconds. Nothing here asserts a wall-clock time: the
assertions are on the steps a call ran against the step time the call
before it measured.
"""

from __future__ import annotations

import threading

from conftest import event_dicts, wait_for
from test_trainer import WAIT, Run, config, finish, new_run_dir, start

from engine.run.control import ControlState
from engine.run.events import EventWriter
from engine.train.faults import parse_faults
from engine.train.trainer import MAX_STEPS_PER_CALL, TARGET_CALL_SECONDS, Trainer

# Slow-ish steps: LeNet-5 on 224x224x3 synthetic images, batch 32, no validation.
SLOW = [
    'data.dataset="synthetic"',
    "data.image_size=[224, 224]",
    "data.synthetic_examples=640",
    "data.validation_split=0.0",
    "train.epochs=1",
    "train.steps_per_epoch=20",
    "train.checkpoint_every=1000",
]
# A call is sized to last TARGET_CALL_SECONDS; it may last twice that before a test complains.
CALL_SECONDS_BOUND = 2 * TARGET_CALL_SECONDS


def call_seconds_per_step(run: Run) -> list[float]:
    """Each call's measured time per step, read from its last step event."""
    by_step = {e["step"]: e["step_time"] for e in run.of("step")}
    ends, total = [], 0
    for steps in run.calls:
        total += steps
        ends.append(total)
    return [by_step[end] for end in ends if end in by_step]


def assert_each_call_fits_the_step_time_before_it(run: Run) -> None:
    """After the first call, a call's steps fit in the bound at the step time the call before measured."""
    per_step = call_seconds_per_step(run)
    for index in range(1, len(per_step)):
        fits = max(1, int(CALL_SECONDS_BOUND / per_step[index - 1]))
        assert run.calls[index] <= fits, (index, run.calls, per_step)


def test_a_stop_waits_for_one_adapted_call_at_most(tmp_path):
    asked_at_call: list[int] = []
    run = start(new_run_dir(tmp_path), SLOW)

    def operator() -> None:
        # The third call is the first sized from a real step (the first one's time is mostly tracing).
        if wait_for(lambda: len(run.calls) >= 3, timeout=WAIT):
            threading.Event().wait(0.05)  # inside that call, most likely
            asked_at_call.append(len(run.calls))
        run.control.request("stop")

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    finish(run)
    thread.join(WAIT)

    assert run.error is None and run.result == "stopped"
    assert asked_at_call, "the run ended before its third call"
    in_flight = asked_at_call[0]
    # The call running when the stop came was the last: no step ran in a call begun after it.
    assert len(run.calls) == in_flight, run.calls
    assert run.steps()[-1] == sum(run.calls[:in_flight]) < 20
    assert run.of("finished")[0]["reason"] == "stopped"
    # And that call was short: the steps half a second holds at the step time measured before it.
    assert_each_call_fits_the_step_time_before_it(run)


def test_call_sizes_follow_the_step_time_and_never_retrace(tmp_path):
    run = finish(start(new_run_dir(tmp_path), [*SLOW, "train.steps_per_epoch=8"]))
    assert run.result == "completed"
    assert sum(run.calls) == 8
    # The first call runs one step: its time is tracing, not a step's.
    assert run.calls[0] == 1
    assert_each_call_fits_the_step_time_before_it(run)
    assert run.compiled.experimental_get_tracing_count() == 1


def test_fast_steps_get_long_calls_without_retracing(tmp_path):
    overrides = ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=40"]
    run = finish(start(new_run_dir(tmp_path), [*overrides, "train.checkpoint_every=1000"]))
    assert run.result == "completed"
    assert run.calls[0] == 1 and sum(run.calls) == 40
    # LeNet-5 at 28x28 takes milliseconds a step: once measured, calls run many steps at once.
    assert max(run.calls) >= 8, run.calls
    assert max(run.calls) <= MAX_STEPS_PER_CALL
    assert len(set(run.calls)) > 1
    assert run.compiled.experimental_get_tracing_count() == 1


def test_a_fixed_steps_per_call_is_kept(tmp_path):
    overrides = ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=9"]
    run = finish(start(new_run_dir(tmp_path), [*overrides, "train.steps_per_call=3"]))
    assert run.result == "completed"
    assert run.calls == [3, 3, 3]


def test_a_calls_steps_are_on_disk_before_the_next_call_starts(tmp_path):
    run_dir = new_run_dir(tmp_path)
    # A writer that would hold step events back for a minute, were they not written each call.
    writer = EventWriter(run_dir / "events.jsonl", flush_interval=60.0)
    overrides = ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=12"]
    trainer = Trainer(config(*overrides, home=run_dir), run_dir, writer, ControlState(), parse_faults(""))
    trainer.setup()
    compiled = trainer._train_calls
    seen: list[tuple[int, list[int]]] = []  # (steps done, steps in the file) as each call starts

    def reading_the_file_first(iterator, steps, nan_step):
        on_disk = [e["step"] for e in event_dicts(run_dir / "events.jsonl") if e["type"] == "step"]
        seen.append((trainer.step, on_disk))
        return compiled(iterator, steps, nan_step)

    trainer._train_calls = reading_the_file_first
    assert trainer.run() == "completed"
    writer.close()
    assert len(seen) >= 3
    for done, on_disk in seen:
        assert on_disk == list(range(1, done + 1))
