"""The learning-rate range test, driven from the front ends: ``convdeck lr-find`` and the TUI.

A range test is a throwaway run in a process of its own
(:mod:`engine.train.lr_find_trial`): TensorFlow loads there and not in the
front end, and nothing it does reaches the run store (its events go to a
temporary directory). The trial raises the rate exponentially, one update a
step, and prints each point of the curve as it is measured; this side
starts it, reads the points as they arrive, and decides with
:mod:`engine.lr_range` (the valley rule, and the steepest point beside it).

TF-free: the CLI and the TUI import it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.config import RunConfig, config_to_toml
from engine.errors import ConfigError
from engine.lr_range import DEFAULT_END, DEFAULT_START, DEFAULT_STEPS, DIVERGE_FACTOR, Suggestion, suggest

MIN_STEPS = 8
"""Fewer points leave the valley rule nothing to choose from (it drops the first tenth)."""
REPORT_PREFIX = "LRFIND "
"""What starts a trial's report lines on its stdout; the rest of a line is one JSON object."""
FINISHED, FAILED, USER_ERROR = 0, 1, 2
"""A trial process's exit codes."""
DIVERGED, NOT_A_NUMBER, ALL_STEPS = "diverged", "nan", "steps"
STOP_REASONS = {
    DIVERGED: f"the smoothed loss passed {DIVERGE_FACTOR:g}x its minimum",
    NOT_A_NUMBER: "the loss was not a number",
    ALL_STEPS: "every step ran",
}
"""Why a range test ended, and how to say so."""
PROCESS_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class CurvePoint:
    """One step of the range test.

    Attributes:
        step: the update's number, from 1.
        learning_rate: the rate the optimizer used for it (read from the optimizer).
        loss: that batch's loss; None when it was not a number.
        smoothed: the debiased moving average of the losses so far; None when not a number.
    """

    step: int
    learning_rate: float
    loss: float | None
    smoothed: float | None

    @classmethod
    def from_report(cls, report: dict) -> CurvePoint:
        """A point from a trial's ``point`` report."""
        return cls(
            step=int(report["step"]),
            learning_rate=float(report["learning_rate"]),
            loss=_number(report.get("loss")),
            smoothed=_number(report.get("smoothed")),
        )


@dataclass(frozen=True)
class RangeTest:
    """A finished range test: its curve, why it ended, and what it suggests.

    Attributes:
        preset: the config's name.
        batch_size: the batch each step trained on.
        start: the first step's rate.
        end: the rate the last step would have reached.
        steps: the steps asked for (``points`` is shorter when the loss diverged).
        points: the curve, one point a step.
        stopped: why it ended: one of :data:`STOP_REASONS`.
        suggestion: the valley's rate (the suggestion) and the steepest point's.
        seconds: the whole test's wall time, the process's start-up included.
        startup_seconds: the part of it spent starting the process (TensorFlow's import).
    """

    preset: str
    batch_size: int
    start: float
    end: float
    steps: int
    points: tuple[CurvePoint, ...]
    stopped: str
    suggestion: Suggestion
    seconds: float = 0.0
    startup_seconds: float | None = None

    @property
    def suggested_rate(self) -> float:
        """The rate to train with, rounded to the 2 significant digits a person would type."""
        return float(f"{self.suggestion.learning_rate:.2g}")

    def as_dict(self) -> dict:
        """Plain data for ``--json``: NaN losses as null, the suggestion beside the curve."""
        data = asdict(self)
        data["points"] = [asdict(point) for point in self.points]
        data["suggestion"] = {**asdict(self.suggestion), "suggested_rate": self.suggested_rate}
        return data


def check_arguments(steps: int, start: float, end: float) -> None:
    """Refuse a range the test cannot run.

    Raises:
        ConfigError: too few steps, or not ``0 < start < end``.
    """
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps: got {steps}; expected at least {MIN_STEPS} (the default is {DEFAULT_STEPS})")
    if not (math.isfinite(start) and start > 0):
        raise ConfigError(f"--start: got {start:g}; expected a rate above 0, e.g. {DEFAULT_START:g}")
    if not (math.isfinite(end) and end > start):
        raise ConfigError(f"--end: got {end:g}; expected a rate above --start {start:g}, e.g. {DEFAULT_END:g}")


def range_config(config: RunConfig, steps: int, start: float) -> RunConfig:
    """The config a range test trains: ``config`` for at most ``steps`` updates, stopping at any trouble.

    One update a call, so the trial sees every step's loss before the next
    one runs and can stop at the step that diverged. One epoch of ``steps``
    updates; on data of fewer batches the trial sets up enough epochs, once
    the trainer has said how many an epoch holds. The trial replaces the
    constant rate by its exponential schedule.

    Raises:
        ConfigError: a multi-worker config (a range test is one process).
    """
    if config.train.strategy == "multi_worker":
        raise ConfigError(
            "train.strategy 'multi_worker': a range test runs in one process; "
            "use --set train.strategy=auto (it uses every local GPU)"
        )
    data = config.model_dump()
    data["train"].update(
        epochs=1,
        steps_per_epoch=steps,
        learning_rate=start,
        schedule="constant",
        on_oom="stop",
        on_nan="stop",
        checkpoint_every=10**9,
        steps_per_call=1,
    )
    return RunConfig.model_validate(data)


def conclude(
    config: RunConfig,
    points: Iterable[CurvePoint],
    stopped: str,
    steps: int,
    start: float = DEFAULT_START,
    end: float = DEFAULT_END,
    seconds: float = 0.0,
    startup_seconds: float | None = None,
) -> RangeTest:
    """What a curve suggests, as a :class:`RangeTest`.

    Raises:
        ConfigError: the loss was NaN from the first step, or the curve has too
            few points before it diverged to suggest anything.
    """
    points = tuple(points)
    finite = [p for p in points if p.loss is not None]
    if not finite:
        first = f"rate {points[0].learning_rate:.2g}" if points else f"--start {start:g}"
        raise ConfigError(
            f"the loss of {config.name} is NaN from the first step ({first}); "
            f"try a lower start, e.g. --start {start / 100:g}, or check the data"
        )
    rates = [p.learning_rate for p in points]
    smoothed = [math.nan if p.smoothed is None else p.smoothed for p in points]
    try:
        suggestion = suggest(rates, smoothed)
    except ValueError as error:
        raise ConfigError(
            f"the range test of {config.name} stopped after {len(points)} steps at rate "
            f"{points[-1].learning_rate:.2g} ({STOP_REASONS.get(stopped, stopped)}): {error}; "
            f"try a lower --start than {start:g} or more --steps"
        ) from None
    return RangeTest(
        preset=config.name,
        batch_size=config.train.batch_size,
        start=start,
        end=end,
        steps=steps,
        points=points,
        stopped=stopped,
        suggestion=suggestion,
        seconds=round(seconds, 2),
        startup_seconds=startup_seconds,
    )


class RangeTestFailed(RuntimeError):
    """The trial process failed for another reason than the user's input (its words)."""


def find_learning_rate(
    config: RunConfig,
    steps: int = DEFAULT_STEPS,
    start: float = DEFAULT_START,
    end: float = DEFAULT_END,
    *,
    on_point: Callable[[CurvePoint], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    timeout: float = PROCESS_TIMEOUT_SECONDS,
) -> RangeTest:
    """Run the range test of ``config`` in a process of its own, and what it suggests.

    Args:
        config: the run's config (its model, data, batch and optimizer).
        steps: steps from ``start`` to ``end``, one update each.
        start: the first step's rate.
        end: the rate of the last step, which a test that diverges never reaches.
        on_point: called with each point as it is measured (from this thread).
        on_start: called with the trial's process once it runs, so that a caller
            waiting in a thread (the TUI) can end it when nobody wants it any more.
        timeout: seconds before the trial is killed.

    Raises:
        ConfigError: the user's mistake: a bad range, the data, a NaN loss from the first step.
        RangeTestFailed: the trial failed otherwise (out of memory, a crash, the timeout).
    """
    check_arguments(steps, start, end)
    trial_config = range_config(config, steps, start)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="convdeck-lr-find-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config_to_toml(trial_config))
        command = [sys.executable, "-m", "engine.train.lr_find_trial", str(path)]
        command += ["--steps", str(steps), "--start", repr(start), "--end", repr(end)]
        outcome = _run_trial(command, Path(tmp) / "stderr", started, on_point, on_start, timeout)
    return conclude(
        config,
        outcome.points,
        outcome.stopped,
        steps,
        start,
        end,
        seconds=time.monotonic() - started,
        startup_seconds=outcome.startup_seconds,
    )


@dataclass
class _Outcome:
    points: list[CurvePoint]
    stopped: str = ""
    startup_seconds: float | None = None
    error: str = ""
    user_error: bool = False


def _run_trial(
    command: list[str],
    stderr_path: Path,
    started: float,
    on_point: Callable[[CurvePoint], None] | None,
    on_start: Callable[[subprocess.Popen], None] | None,
    timeout: float,
) -> _Outcome:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    timed_out = threading.Event()
    with open(stderr_path, "w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True, env=env
        )

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            if on_start is not None:
                on_start(process)
            outcome = _read_reports(process.stdout, started, on_point)
            returncode = process.wait()
        except BaseException:  # the caller interrupted: the trial must not outlive it
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        stderr.seek(0)
        errors = stderr.read()
    if outcome.user_error:
        raise ConfigError(outcome.error)
    if outcome.error:
        raise RangeTestFailed(outcome.error)
    if timed_out.is_set():
        raise RangeTestFailed(f"the range test gave no answer within {timeout:g} s")
    if returncode != FINISHED or not outcome.stopped:
        raise RangeTestFailed(_crash(returncode, errors))
    return outcome


def _read_reports(stream, started: float, on_point: Callable[[CurvePoint], None] | None) -> _Outcome:
    """The trial's report lines, as they arrive: the start-up, each point, the end or the error."""
    outcome = _Outcome(points=[])
    for line in stream:
        if not line.startswith(REPORT_PREFIX):
            continue
        try:
            report = json.loads(line[len(REPORT_PREFIX) :])
        except ValueError:
            continue
        if report.get("ready"):
            outcome.startup_seconds = round(time.monotonic() - started, 2)
        elif "point" in report:
            point = CurvePoint.from_report(report["point"])
            outcome.points.append(point)
            if on_point is not None:
                on_point(point)
        elif "stopped" in report:
            outcome.stopped = str(report["stopped"])
        elif "error" in report:
            outcome.error, outcome.user_error = str(report["error"]), bool(report.get("user_error"))
    return outcome


def _crash(returncode: int, errors: str) -> str:
    """One line on a trial that ended without saying why: its signal, or its last words."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the range test was killed by {name} (out of host memory?)"
    last = next((line.strip() for line in reversed(errors.splitlines()) if line.strip()), "")
    return f"the range test exited with code {returncode}" + (f": {last}" if last else "")


def _number(value: object) -> float | None:
    """A loss from a report: null (not a number) stays None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None
