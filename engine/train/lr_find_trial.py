"""The learning-rate range test, in a process of its own: ``python -m engine.train.lr_find_trial CONFIG``.

The driver (:mod:`engine.run.lr_find`) is TF-free; this is the half that
imports TensorFlow. It trains the config through the Trainer's own setup
and loop (its model, data, loss, optimizer, precision and strategy), with
the optimizer's rate replaced by an exponential schedule from ``--start``
to ``--end`` over ``--steps`` updates, one update a call. Each step's
event passes through a recorder that smooths the loss and ends the run,
through the control flags a person's ``stop`` uses, once the smoothed loss
passes 4x its minimum or every step has run.

The rate of a point is the one the step event reports: the trainer reads it
from the optimizer inside the step, before the update that uses it.

Each point is printed as it is measured (``LRFIND {"point": ...}``), then
one ``{"stopped": reason}`` line; a failure is one ``{"error": ...}`` line.
Nothing is saved: the events go to a temporary directory, and the trainer
neither checkpoints nor writes a model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.config import ConfigError, RunConfig, load_toml, validate_config
from engine.lr_range import LossSmoother, rate_at
from engine.run.control import ControlState
from engine.run.events import EventWriter
from engine.run.lr_find import (
    ALL_STEPS,
    DIVERGED,
    FAILED,
    FINISHED,
    NOT_A_NUMBER,
    REPORT_PREFIX,
    USER_ERROR,
)


def say(**fields: Any) -> None:
    """One report line for the driver."""
    print(REPORT_PREFIX + json.dumps(fields), flush=True)


class CurveRecorder(EventWriter):
    """Writes the trainer's events, and turns its steps into the curve, stopping the run at its end.

    Args:
        path: the (temporary) events file.
        control: the trainer's control flags; a ``stop`` ends the run after the current step.
        steps: the steps the test runs at most.
        start: the first step's rate.
        end: the last step's rate.
    """

    def __init__(self, path: Path, control: ControlState, steps: int, start: float, end: float) -> None:
        super().__init__(path, flush_interval=60.0)
        self.control = control
        self.steps, self.start, self.end = steps, start, end
        self.smoother = LossSmoother()
        self.stopped = ""

    def emit(self, type: str, **fields: Any) -> dict:
        event = super().emit(type, **fields)
        if self.stopped:
            return event
        if type == "step":
            self._record(fields["step"], fields["learning_rate"], fields["loss"])
        elif type == "nan":
            # The trainer reports no step for a NaN loss; its rate is the schedule's at that step.
            self._record(fields["step"], rate_at(fields["step"] - 1, self.steps, self.start, self.end), math.nan)
        return event

    def _record(self, step: int, rate: float, loss: float) -> None:
        smoothed = self.smoother.add(loss)
        say(point={"step": step, "learning_rate": rate, "loss": _finite(loss), "smoothed": _finite(smoothed)})
        if not math.isfinite(loss):
            self.stopped = NOT_A_NUMBER
        elif self.smoother.diverged(smoothed):
            self.stopped = DIVERGED
        elif step >= self.steps:
            self.stopped = ALL_STEPS
        if self.stopped:
            self.control.request("stop")


def rate_schedule(steps: int, start: float, end: float):
    """:func:`engine.lr_range.rate_at` as a Keras schedule of the optimizer's update count."""
    import keras

    # start * (end / start) ** (updates / (steps - 1)): the same exponential, evaluated in the graph.
    return keras.optimizers.schedules.ExponentialDecay(start, decay_steps=steps - 1, decay_rate=end / start)


def range_test(config: RunConfig, steps: int, start: float, end: float) -> str:
    """Train the range test; why it stopped (the points are printed as they come).

    ``config`` asks for one epoch of ``steps`` updates. When the data holds
    fewer batches, the trainer is set up again for just enough epochs: a
    trainer prepares its data pipelines for the epochs it is told, and those
    of 100 epochs of digits cost a second that a range test never uses.

    Raises:
        OutOfMemory: a step ran out of device memory.
    """
    import tensorflow as tf

    control = ControlState()
    with tempfile.TemporaryDirectory(prefix="convdeck-lr-find-") as tmp:
        run_dir = Path(tmp)
        with CurveRecorder(run_dir / "events.jsonl", control, steps, start, end) as recorder:
            trainer = _set_up(config, run_dir, recorder, control)
            if trainer.steps_per_epoch < steps:
                trainer.tensorboard.close()
                tf.keras.backend.clear_session()  # the model is built afresh, from the same seed
                epochs = math.ceil(steps / trainer.steps_per_epoch)
                trainer = _set_up(_with_epochs(config, epochs), run_dir, recorder, control)
            trainer.data.val = None  # the curve is the training loss; no epoch needs a validation pass
            trainer.optimizer.learning_rate = rate_schedule(steps, start, end)
            try:
                trainer.run()
            finally:
                trainer.tensorboard.close()
    return recorder.stopped or ALL_STEPS


def _set_up(config: RunConfig, run_dir: Path, recorder: CurveRecorder, control: ControlState):
    """A trainer of ``config`` that saves nothing, set up: its model, data and optimizer built."""
    from engine.train.faults import parse_faults
    from engine.train.trainer import Trainer

    class RangeTrainer(Trainer):
        """Saves nothing: no checkpoint, no model.keras, no final event."""

        def save_checkpoint(self) -> None:
            return None

        def finish(self, reason: str) -> str:
            return reason

    trainer = RangeTrainer(config, run_dir, recorder, control, parse_faults())
    trainer.setup()
    return trainer


def _with_epochs(config: RunConfig, epochs: int) -> RunConfig:
    data = config.model_dump()
    data["train"]["epochs"] = epochs
    return RunConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.lr_find_trial")
    parser.add_argument("config", type=Path, help="the config.toml to test (engine.run.lr_find.range_config's)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--end", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        data = load_toml(args.config)
        config = validate_config(data, source=str(args.config))
    except ConfigError as error:
        say(error=str(error), user_error=True)
        return USER_ERROR
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from engine.train.trainer import OutOfMemory

    say(ready=True)
    try:
        stopped = range_test(config, args.steps, args.start, args.end)
    except ConfigError as error:
        say(error=str(error), user_error=True)
        return USER_ERROR
    except (OutOfMemory, tf.errors.ResourceExhaustedError) as error:
        message = error.message if isinstance(error, OutOfMemory) else _first_line(error)
        say(
            error=f"out of memory at batch {config.train.batch_size}: {message}; "
            "try a smaller train.batch_size (`convdeck fit-batch` finds one)"
        )
        return FAILED
    say(stopped=stopped)
    return FINISHED


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
