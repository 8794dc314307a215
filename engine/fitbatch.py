"""Find the largest batch that really runs: ``convdeck fit-batch PRESET``.

As Lightning's batch-size finder: double the batch until a trial fails
(or the cap is reached), then binary-search between the last batch that ran
and the first that did not. Each trial is a fresh process
(``python -m engine.train.fitbatch_trial --trial CONFIG --batch B --steps K``) that
builds the model and the data and runs K real train steps and one
validation batch: TensorFlow cannot hand GPU memory back inside a process,
so a failed trial must not poison the next. The trial honours
``CONVDECK_FAULTS``, so on a CPU the search is tested against
``oom:batch_size>N``.

The answer keeps a safety margin: 90% of the largest batch that ran,
rounded down to a multiple of 8 from 64 up. When no trial failed below the
cap, the cap itself is the answer.

The search and the driver are TF-free (the CLI imports them); only the
trial imports TensorFlow, inside its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.config import RunConfig, config_to_toml

DEFAULT_STEPS = 3
DEFAULT_CAP = 4096
SAFETY = 0.9
# The binary search stops once the bracket is this fine relative to the lower end:
# the safety margin makes a finer answer pointless.
PRECISION = 16
TRIAL_TIMEOUT_SECONDS = 900.0
# A trial's exit codes.
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
    """One trial's outcome.

    Attributes:
        batch_size: the per-replica batch tried.
        fits: it ran its steps.
        detail: a short line: the OOM message, the signal, or the error.
        seconds: the trial's wall time, process start included.
        images_per_sec: throughput of its last step, when it ran.
        peak_bytes: peak device memory TensorFlow reported (GPU only).
        train_examples: the size of the training split (bounds the batch).
        error: a failure that is no out-of-memory ends the search.
        user_error: that failure is the user's (bad config, missing data).
    """

    batch_size: int
    fits: bool
    detail: str = ""
    seconds: float = 0.0
    images_per_sec: float | None = None
    peak_bytes: int | None = None
    train_examples: int | None = None
    error: bool = False
    user_error: bool = False


@dataclass
class SearchResult:
    """What the search found.

    Attributes:
        trials: every trial, in order.
        largest: the largest batch that ran (0: not even batch 1).
        first_failure: the smallest batch that failed, or None.
        cap: the cap the search respected (lowered to the training set's size).
        suggested: the batch to use (the margin applied), 0 if none.
        error: a trial failed for another reason than memory; the search stopped.
    """

    trials: list[Trial] = field(default_factory=list)
    largest: int = 0
    first_failure: int | None = None
    cap: int = DEFAULT_CAP
    suggested: int = 0
    error: Trial | None = None

    @property
    def limited_by_memory(self) -> bool:
        return self.first_failure is not None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["limited_by_memory"] = self.limited_by_memory
        return data


def safe_batch(largest: int, limited_by_memory: bool = True) -> int:
    """The batch to suggest: 90% of the largest that ran, a multiple of 8 from 64 up.

    With no failure below the cap, the largest (the cap) is used as it is.
    """
    if largest <= 0:
        return 0
    if not limited_by_memory:
        return largest
    batch = max(1, int(largest * SAFETY))
    return batch - batch % 8 if batch >= 64 else batch


def search(
    run_trial: Callable[[int], Trial],
    start: int,
    cap: int = DEFAULT_CAP,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Double from ``start`` to the first failure (or ``cap``), then binary-search.

    When ``start`` itself fails, halve until a batch runs: that brackets the
    answer too. A trial that fails for another reason than memory stops the
    search (``result.error``).

    Args:
        run_trial: runs one trial at a batch size.
        start: the first batch to try (the preset's).
        cap: the largest batch to try; a trial's ``train_examples`` lowers it.
        on_trial: called after each trial, e.g. to print it.
    """
    result = SearchResult(cap=max(1, cap))
    tried: dict[int, bool] = {}

    def attempt(batch: int) -> bool | None:
        trial = run_trial(batch)
        result.trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        if trial.error:
            result.error = trial
            return None
        if trial.train_examples and trial.train_examples < result.cap:
            result.cap = trial.train_examples  # a batch beyond the data is meaningless
        tried[batch] = trial.fits
        return trial.fits

    low, high = 0, None  # the largest that ran, the smallest that failed
    batch = max(1, min(start, result.cap))
    while True:  # doubling (or halving, while the start fails)
        fits = attempt(batch)
        if fits is None:
            return _finish(result, low, high)
        if fits:
            low = batch
            if high is not None or batch >= result.cap:
                break
            batch = min(batch * 2, result.cap)
        else:
            high = batch
            if low or batch == 1:
                break
            batch //= 2
    while high is not None and high - low > max(1, low // PRECISION):
        middle = (low + high) // 2
        fits = attempt(middle)
        if fits is None:
            break
        if fits:
            low = middle
        else:
            high = middle
    return _finish(result, low, high)


def _finish(result: SearchResult, low: int, high: int | None) -> SearchResult:
    result.largest = low
    result.first_failure = high
    result.suggested = 0 if result.error and not low else safe_batch(low, high is not None)
    return result


# ----- trials in subprocesses (the driver side, TF-free) --------------------------------


def trial_in_subprocess(
    config: RunConfig, batch: int, steps: int, timeout: float = TRIAL_TIMEOUT_SECONDS
) -> Trial:
    """Run one trial in a fresh Python process and read its outcome."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="convdeck-fit-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config_to_toml(config))
        command = [sys.executable, "-m", "engine.train.fitbatch_trial", "--trial", str(path)]
        command += ["--batch", str(batch), "--steps", str(steps)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return Trial(batch, False, f"no answer within {timeout:g} s", error=True)
    seconds = round(time.monotonic() - started, 2)
    return read_trial(batch, done.returncode, done.stdout, done.stderr, seconds)


def read_trial(batch: int, returncode: int, stdout: str, stderr: str, seconds: float) -> Trial:
    """A trial's outcome from its exit code and output."""
    reported = _reported(stdout)
    trial = Trial(
        batch,
        fits=returncode == FITS,
        detail=str(reported.get("detail", "")),
        seconds=seconds,
        images_per_sec=reported.get("images_per_sec"),
        peak_bytes=reported.get("peak_bytes"),
        train_examples=reported.get("train_examples"),
    )
    if returncode in (FITS, OUT_OF_MEMORY):
        return trial
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
    if _looks_like_oom(stderr):
        trial.detail = trial.detail or last
        return trial
    trial.error = True
    trial.user_error = returncode == USER_ERROR
    trial.detail = trial.detail or last or f"the trial exited with code {returncode}"
    return trial


def _reported(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX) :])
            except ValueError:
                return {}
    return {}


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def _looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


# ----- one trial (the subprocess side; imports TensorFlow) ------------------------------


def trial_config(config: RunConfig, batch: int, steps: int) -> RunConfig:
    """The config a trial trains: one short epoch at ``batch``, stopping at any trouble."""
    data = config.model_dump()
    data["train"].update(
        batch_size=batch,
        epochs=1,
        steps_per_epoch=steps,
        on_oom="stop",
        on_nan="stop",
        checkpoint_every=10**9,
    )
    return RunConfig.model_validate(data)
