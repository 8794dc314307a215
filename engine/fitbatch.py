"""Find the batch to train with: ``convdeck fit-batch PRESET``.

Two modes, chosen before TensorFlow starts (:func:`choose_mode`):

- **memory**, when there is device memory to find: NVML sees a GPU that
  ``CUDA_VISIBLE_DEVICES`` does not hide, or ``CONVDECK_FAULTS`` configures an
  ``oom`` fault (a simulated limit: the search runs as if there were device
  memory, which is how it is tested on a CPU). The batch doubles from the
  preset's until a trial runs out of memory (or reaches the cap), then a
  binary search runs between the largest batch that fit and the smallest
  that failed. Each trial is a fresh process: TensorFlow cannot hand GPU
  memory back inside a process, so a failed trial must not poison the next.
  The suggestion is the largest batch that fit minus a headroom.
- **throughput**, when there is none (a CPU): a few sizes
  (:data:`THROUGHPUT_SIZES` and the preset's own) are measured in ONE
  process, since there is no memory to poison and TensorFlow's import is
  most of a trial's cost; the fastest is named.

A trial (:mod:`engine.train.fitbatch_trial`) trains the run's config (its
accumulation, precision and strategy) at one batch: a warm-up step that
traces the step function and is not timed (the step that runs out of
memory, if any), a validation batch, then K timed steps; images/s is the
median of the timed steps. A batch never exceeds the training set: one
optimizer step takes ``batch_size * accumulation_steps`` images.

This module is TF-free (the CLI imports it); only the trial process imports
TensorFlow.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.config import RunConfig, config_to_toml

DEFAULT_TIMED_STEPS = 5
DEFAULT_CAP = 4096
DEFAULT_HEADROOM = 10.0
"""Percent taken off the largest batch that fit: memory use varies from step to step."""
THROUGHPUT_SIZES = (32, 64, 128, 256)
# The binary search stops once the bracket is this fine relative to the lower end:
# the headroom makes a finer answer pointless.
PRECISION = 16
PROCESS_TIMEOUT_SECONDS = 900.0
MEMORY, THROUGHPUT = "memory", "throughput"
# Why a search stopped growing the batch (SearchResult.bound).
BOUND_MEMORY, BOUND_DATA, BOUND_MAX = "memory", "data", "max"
# A trial process's exit codes.
FITS, USER_ERROR, ERROR, OUT_OF_MEMORY = 0, 2, 1, 3
RESULT_PREFIX = "FITBATCH "
# Messages TensorFlow and CUDA use when device memory runs out in forms other
# than ResourceExhaustedError (cuDNN or cuBLAS failing to get a workspace).
OOM_MARKERS = (
    "out of memory",
    "resource exhausted",
    "resourceexhausted",
    "oom when allocating",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "cuda_error_out_of_memory",
    "failed to allocate",
    "dst tensor is not initialized",
)


@dataclass
class Trial:
    """One trial's outcome, as the trial process reports it (``RESULT_PREFIX`` + JSON).

    Attributes:
        batch_size: the global batch tried.
        fits: it ran its steps.
        detail: a short line: the OOM message, the signal, or the error.
        seconds: the trial's own wall time (setup, steps, validation).
        startup_seconds: the process start-up this trial waited for (TensorFlow's
            import), when it was the first of its process.
        images_per_sec: the median over the timed steps, when it ran.
        timed_steps: how many steps that median is of.
        peak_bytes: peak device memory TensorFlow reported (GPU only).
        train_examples: the size of the training split.
        batch_limit: the largest batch the data allows (``train_examples //
            accumulation_steps``, a multiple of the replicas).
        replicas: the strategy's replicas (a batch must split over them).
        gpus: the GPUs TensorFlow saw.
        beyond_data: the batch exceeded ``batch_limit``; nothing was trained.
        error: a failure that is no out-of-memory ends the search.
        user_error: that failure is the user's (bad config, missing data).
    """

    batch_size: int
    fits: bool
    detail: str = ""
    seconds: float = 0.0
    startup_seconds: float | None = None
    images_per_sec: float | None = None
    timed_steps: int = 0
    peak_bytes: int | None = None
    train_examples: int | None = None
    batch_limit: int | None = None
    replicas: int = 1
    gpus: int | None = None
    beyond_data: bool = False
    error: bool = False
    user_error: bool = False

    @classmethod
    def from_report(cls, report: dict) -> Trial:
        """A trial from the JSON a trial process printed; unknown keys are ignored."""
        return cls(**{k: v for k, v in report.items() if k in cls.__dataclass_fields__})


@dataclass
class SearchResult:
    """What fit-batch found.

    Attributes:
        mode: ``memory`` (a search for the largest batch) or ``throughput``.
        reason: why that mode: the GPU, the simulated limit, or why there is no GPU.
        trials: every trial, in order.
        largest: the largest batch that fit (0: not even the smallest).
        first_failure: the smallest batch that ran out of memory, or None.
        cap: the largest batch the search allowed (``--max``, lowered to the data's limit).
        bound: what stopped the batch growing: ``memory``, ``data`` or ``max``.
        train_examples: the size of the training split, once a trial saw it.
        headroom: the percent taken off ``largest`` when memory bounds the batch.
        suggested: the batch to use, 0 if none.
        fastest: the batch with the most images/s, among those that fit.
        error: a trial failed for another reason than memory; the search stopped.
    """

    mode: str = MEMORY
    reason: str = ""
    trials: list[Trial] = field(default_factory=list)
    largest: int = 0
    first_failure: int | None = None
    cap: int = DEFAULT_CAP
    bound: str = BOUND_MAX
    train_examples: int | None = None
    headroom: float = DEFAULT_HEADROOM
    suggested: int = 0
    fastest: int | None = None
    error: Trial | None = None

    @property
    def limited_by_memory(self) -> bool:
        return self.first_failure is not None

    @property
    def fastest_trial(self) -> Trial | None:
        return next((t for t in self.trials if t.fits and t.batch_size == self.fastest), None)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["limited_by_memory"] = self.limited_by_memory
        return data

    def see(self, trial: Trial) -> None:
        """Record a trial, and what it says about the data."""
        self.trials.append(trial)
        if trial.train_examples:
            self.train_examples = trial.train_examples
        if trial.batch_limit and trial.batch_limit < self.cap:
            self.cap, self.bound = trial.batch_limit, BOUND_DATA


# ----- the mode ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How fit-batch proceeds here.

    Attributes:
        name: ``memory`` or ``throughput``.
        reason: one line: which GPU, which fault, or why there is no GPU.
        simulated: the memory is a ``CONVDECK_FAULTS`` limit, not a device's.
    """

    name: str
    reason: str
    simulated: bool = False


def choose_mode(faults: str | None = None, source: Any = None) -> Mode:
    """Search device memory or measure throughput? Decided without TensorFlow.

    Args:
        faults: ``CONVDECK_FAULTS`` (read from the environment when None); any
            ``oom`` rule simulates device memory.
        source: a :class:`engine.gpu.GpuSource` (NVML by default; tests pass fakes).
    """
    if faults is None:
        faults = os.environ.get("CONVDECK_FAULTS", "")
    simulated = [rule.strip() for rule in faults.split(",") if rule.strip().startswith("oom:")]
    if simulated:
        return Mode(MEMORY, f"CONVDECK_FAULTS simulates a memory limit: {', '.join(simulated)}", True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.split(",")[0].strip() in ("", "-1"):
        return Mode(THROUGHPUT, f"no GPU: CUDA_VISIBLE_DEVICES={visible!r} hides them")
    if source is None:
        from engine.gpu import NvmlSource

        source = NvmlSource()
    sample = source.sample()
    if sample.unavailable or sample.error or not sample.devices:
        why = sample.unavailable or sample.error or "NVML lists no device"
        return Mode(THROUGHPUT, why[0].lower() + why[1:])
    device = sample.devices[0]
    gib = device.memory_total / (1 << 30)
    return Mode(MEMORY, f"GPU {device.index}: {device.name}, {gib:.0f} GiB")


# ----- the memory search --------------------------------------------------------------------


def suggest(largest: int, headroom: float = DEFAULT_HEADROOM, unit: int = 1) -> int:
    """The largest batch that fit, less ``headroom`` percent.

    Rounded down to a multiple of 8 from 64 up (kernels like it) and of
    ``unit`` (the replicas, so the batch splits); at least ``unit``.
    """
    if largest <= 0:
        return 0
    batch = int(largest * (100.0 - headroom) / 100.0)
    if batch >= 64:
        batch -= batch % 8
    batch -= batch % unit
    return max(unit, batch) if largest >= unit else largest


def search(
    run_trial: Callable[[int], Trial],
    start: int,
    cap: int = DEFAULT_CAP,
    on_trial: Callable[[Trial], None] | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> SearchResult:
    """Double from ``start`` to the first failure (or the cap), then binary-search.

    When ``start`` itself fails, halve until a batch fits: that brackets the
    answer too. A trial that fails for another reason than memory stops the
    search (``result.error``). Batches stay multiples of the replicas and
    within the data's limit, both learnt from the first trial.

    Args:
        run_trial: runs one trial at a batch size.
        start: the first batch to try (the preset's).
        cap: the largest batch to try (``--max``).
        on_trial: called after each trial, e.g. to print it.
        headroom: percent taken off the largest batch that fit.
    """
    result = SearchResult(mode=MEMORY, cap=max(1, cap), headroom=headroom)
    unit = 1

    def attempt(batch: int) -> bool | None:
        nonlocal unit
        trial = run_trial(batch)
        result.see(trial)
        unit = max(1, trial.replicas)
        if on_trial is not None:
            on_trial(trial)
        if trial.error:
            result.error = trial
            return None
        return trial.fits

    low, high = 0, None  # the largest that fit, the smallest that failed
    batch = max(1, min(start, result.cap))
    while True:  # doubling (or halving, while the start fails)
        fits = attempt(batch)
        if fits is None:
            return _finish(result, low, high, unit)
        if result.trials[-1].beyond_data and result.cap < batch:
            batch = result.cap  # the data's limit, now known: try it instead
            continue
        if fits:
            low = batch
            if high is not None or batch >= result.cap:
                break
            batch = min(batch * 2, result.cap)
        else:
            high = batch
            if low or batch <= unit:
                break
            batch = max(unit, batch // 2 // unit * unit)
    while high is not None and high - low > max(unit, low // PRECISION):
        middle = (low + high) // 2 // unit * unit
        if middle <= low:
            break
        fits = attempt(middle)
        if fits is None:
            break
        if fits:
            low = middle
        else:
            high = middle
    return _finish(result, low, high, unit)


def _finish(result: SearchResult, low: int, high: int | None, unit: int) -> SearchResult:
    result.largest, result.first_failure = low, high
    result.fastest = _fastest(result.trials)
    if high is not None:
        result.bound = BOUND_MEMORY
        result.suggested = suggest(low, result.headroom, unit)
    else:
        # Nothing ran out of memory below the cap: memory does not choose the batch; speed may.
        result.suggested = result.fastest or low
    if result.error is not None and not low:
        result.suggested = 0
    return result


def _fastest(trials: Sequence[Trial]) -> int | None:
    measured = [t for t in trials if t.fits and t.images_per_sec]
    return max(measured, key=lambda t: t.images_per_sec).batch_size if measured else None


# ----- throughput (no device memory) ----------------------------------------------------------


def throughput_sizes(preset_batch: int, cap: int) -> list[int]:
    """The sizes to measure: :data:`THROUGHPUT_SIZES` and the preset's, none above ``cap``."""
    return sizes_within(sorted({*THROUGHPUT_SIZES, preset_batch}), cap)


def sizes_within(sizes: Sequence[int], limit: int) -> list[int]:
    """``sizes`` up to ``limit``; ``limit`` itself replaces those above it."""
    kept = [size for size in sizes if size <= limit]
    if len(kept) < len(sizes) and limit not in kept:
        kept.append(limit)
    return kept


def measure_throughput(
    run_sizes: Callable[[list[int], Callable[[Trial], None]], list[Trial]],
    sizes: list[int],
    cap: int,
    on_trial: Callable[[Trial], None] | None = None,
    reason: str = "",
) -> SearchResult:
    """Measure ``sizes`` (one process: ``run_sizes``); the fastest is the suggestion."""
    result = SearchResult(mode=THROUGHPUT, reason=reason, cap=cap, headroom=0.0)

    def seen(trial: Trial) -> None:
        result.see(trial)
        if on_trial is not None:
            on_trial(trial)

    run_sizes(sizes, seen)
    result.error = next((t for t in result.trials if t.error), None)
    fitted = [t.batch_size for t in result.trials if t.fits]
    result.largest = max(fitted, default=0)
    result.first_failure = min((t.batch_size for t in result.trials if _ran_out(t)), default=None)
    result.fastest = _fastest(result.trials)
    result.suggested = result.fastest or result.largest
    if result.first_failure is not None:
        result.bound = BOUND_MEMORY
    return result


def _ran_out(trial: Trial) -> bool:
    return not (trial.fits or trial.error or trial.beyond_data)


# ----- the whole command ----------------------------------------------------------------------


class _TensorFlowSeesNoGpu(Exception):
    def __init__(self, trial: Trial) -> None:
        self.trial = trial


def find_batch(
    config: RunConfig,
    mode: Mode,
    cap: int = DEFAULT_CAP,
    headroom: float = DEFAULT_HEADROOM,
    timed_steps: int = DEFAULT_TIMED_STEPS,
    on_trial: Callable[[Trial], None] | None = None,
    on_switch: Callable[[str], None] | None = None,
    processes: Any = None,
) -> SearchResult:
    """Search memory or measure throughput, as ``mode`` says; trials in subprocesses.

    When NVML sees a GPU but TensorFlow does not (a CPU-only build, a broken
    CUDA), the first trial says so and fit-batch measures throughput instead.

    Args:
        config: the run's config.
        mode: from :func:`choose_mode`.
        cap: the largest batch to try.
        headroom: percent taken off the largest batch that fit.
        timed_steps: timed steps per trial.
        on_trial: called with each trial as it ends.
        on_switch: called with the reason when the memory search turns to throughput.
        processes: runs trial processes (tests pass a fake); :func:`run_trial_process`.
    """
    run = processes or run_trial_process
    start = min(config.train.batch_size, cap)
    if mode.name == MEMORY:

        def one_trial(batch: int) -> Trial:
            trials = run(config, [batch], timed_steps)
            trial = trials[0]
            if not mode.simulated and trial.gpus == 0:
                raise _TensorFlowSeesNoGpu(trial)
            return trial

        try:
            result = search(one_trial, start, cap, on_trial, headroom)
        except _TensorFlowSeesNoGpu:
            mode = Mode(THROUGHPUT, f"TensorFlow sees no GPU ({mode.reason} to NVML)")
            if on_switch is not None:
                on_switch(mode.reason)
        else:
            result.reason = mode.reason
            return result

    def run_sizes(sizes: list[int], seen: Callable[[Trial], None]) -> list[Trial]:
        return run(config, sizes, timed_steps, seen)

    return measure_throughput(run_sizes, throughput_sizes(start, cap), cap, on_trial, mode.reason)


# ----- trial processes (the driver side, TF-free) --------------------------------------------


def run_trial_process(
    config: RunConfig,
    sizes: list[int],
    timed_steps: int,
    on_trial: Callable[[Trial], None] | None = None,
    timeout: float = PROCESS_TIMEOUT_SECONDS,
) -> list[Trial]:
    """Run the trials at ``sizes`` in one fresh Python process, in order.

    Each trial is passed to ``on_trial`` as its line arrives. When the process
    dies before it reports a failure (a signal, an out-of-memory it could not
    report, a crash), the size it was at gets that failure; later sizes are
    not tried.
    """
    started = time.monotonic()
    timed_out = threading.Event()
    with tempfile.TemporaryDirectory(prefix="convdeck-fit-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config_to_toml(config))
        command = [sys.executable, "-m", "engine.train.fitbatch_trial", "--trial", str(path)]
        command += ["--steps", str(timed_steps)]
        for size in sizes:
            command += ["--batch", str(size)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        with open(Path(tmp) / "stderr", "w+") as stderr:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
            )

            def kill() -> None:
                timed_out.set()
                process.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                trials = _read_trials(process.stdout, started, on_trial)
                returncode = process.wait()
            finally:
                timer.cancel()
            stderr.seek(0)
            errors = stderr.read()
    pending = _pending(sizes, trials)
    ended_early = returncode != FITS or not trials
    if ended_early and pending and not any(_ran_out(t) or t.error for t in trials):
        if timed_out.is_set():
            trial = Trial(pending[0], False, f"no answer within {timeout:g} s", error=True)
        else:
            trial = read_trial(pending[0], returncode, "", errors, 0.0)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    return trials


def _pending(sizes: list[int], trials: list[Trial]) -> list[int]:
    """The sizes a process had still to try, as it would have replaced them by the data's limit."""
    if not trials:
        return list(sizes)
    tried = {t.batch_size for t in trials}
    pending = [size for size in sizes if size > max(tried)]
    limit = trials[-1].batch_limit
    return [size for size in sizes_within(pending, limit) if size not in tried] if limit else pending


def _read_trials(stream: Any, started: float, on_trial: Callable[[Trial], None] | None) -> list[Trial]:
    """Trials from a process's report lines, timed as they arrive."""
    trials: list[Trial] = []
    last, startup = started, None
    for line in stream:
        report = _report(line)
        if report is None:
            continue
        now = time.monotonic()
        if report.get("ready"):  # TensorFlow is imported: the start-up is over
            startup = round(now - started, 2)
        else:
            trial = Trial.from_report(report)
            trial.seconds, trial.startup_seconds = round(now - last, 2), startup
            startup = None
            trials.append(trial)
            if on_trial is not None:
                on_trial(trial)
        last = now
    return trials


def read_trial(batch: int, returncode: int, stdout: str, stderr: str, seconds: float) -> Trial:
    """A trial's outcome from a process's exit code and output (its report, when it made one)."""
    reports = [r for r in map(_report, stdout.splitlines()) if r and not r.get("ready")]
    if reports:
        trial = Trial.from_report(reports[-1])
        trial.seconds = seconds
        return trial
    trial = Trial(batch, fits=False, seconds=seconds)
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        # The kernel's OOM killer ends a trial that ran the host out of memory.
        trial.detail = f"killed by {name} (host memory?)"
        return trial
    last = _last_line(stderr)
    if returncode == OUT_OF_MEMORY or looks_like_oom(stderr):
        trial.detail = last or "out of memory"
        return trial
    trial.error = True
    trial.user_error = returncode == USER_ERROR
    if returncode == FITS:
        trial.detail = "the trial process ended without a report"
    else:
        trial.detail = last or f"the trial exited with code {returncode}"
    return trial


def _report(line: str) -> dict | None:
    if not line.startswith(RESULT_PREFIX):
        return None
    try:
        report = json.loads(line[len(RESULT_PREFIX) :])
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def looks_like_oom(text: str) -> bool:
    """Does an error message say device (or host) memory ran out?"""
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


# ----- what a trial trains (used by the trial process) -----------------------------------------


def trial_config(config: RunConfig, batch: int, steps: int, epochs: int = 1) -> RunConfig:
    """The config a trial trains: ``steps`` steps an epoch at ``batch``, stopping at any trouble.

    Checkpoints and remedies are off: a trial only measures. One step a
    call, so each step is timed on its own (a real run's longer calls save
    it a little dispatch, most at small batches).
    """
    data = config.model_dump()
    data["train"].update(
        batch_size=batch,
        epochs=epochs,
        steps_per_epoch=steps,
        on_oom="stop",
        on_nan="stop",
        checkpoint_every=10**9,
        steps_per_call=1,
    )
    return RunConfig.model_validate(data)


def batch_limit(train_examples: int, accumulation_steps: int, replicas: int = 1) -> int:
    """The largest batch the data allows: one optimizer step takes every batch it accumulates."""
    limit = max(1, train_examples // max(1, accumulation_steps))
    return max(replicas, limit // replicas * replicas)


def median_images_per_sec(step_events: Sequence[dict]) -> tuple[float | None, int]:
    """The median images/s of the timed steps (all but the first, which traced), and their count."""
    rates = [e["images_per_sec"] for e in step_events[1:] if e.get("images_per_sec")]
    return (round(statistics.median(rates), 1) if rates else None), len(rates)
