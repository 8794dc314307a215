"""Evaluating a run's weights in a process of its own (the UI and CLI never load TensorFlow).

``python -m engine.train.evaluate RUN_DIR`` does the work and writes
``eval.json``; this side starts it, waits, and reads the report back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from engine.errors import raise_for_child
from engine.evaluation import EvalReport

EVAL_TIMEOUT_SECONDS = 3600.0


def evaluate_in_subprocess(
    run_dir: Path,
    weights: str = "last",
    split: str = "validation",
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> EvalReport:
    """Run the evaluation and return its report.

    Args:
        run_dir: the run's directory.
        weights: ``last`` or ``best``.
        split: ``validation`` or ``train``.
        on_start: called with the evaluator's process as soon as it runs, so a
            caller that waits in a thread (the TUI) can end it when nobody wants it any more.

    Raises:
        ConfigError: the run cannot be evaluated (no weights, no data): the evaluator's one line.
        RuntimeError: the evaluator failed for another reason (its last lines of output).
    """
    command = [sys.executable, "-m", "engine.train.evaluate", str(run_dir), "--weights", weights, "--split", split]
    done = _run(command, on_start)
    raise_for_child(done.returncode, done.stderr, "evaluation")
    return EvalReport.from_json(json.loads(done.stdout.strip().splitlines()[-1]))


def _run(command: list[str], on_start: Callable[[subprocess.Popen], None] | None) -> subprocess.CompletedProcess:
    """``subprocess.run(command, capture_output=True, timeout=...)``, with the process shown to ``on_start``."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    ) as process:
        if on_start is not None:
            on_start(process)
        try:
            stdout, stderr = process.communicate(timeout=EVAL_TIMEOUT_SECONDS)
        except BaseException:  # a timeout, or the caller interrupted: the evaluator must not outlive it
            process.kill()
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
