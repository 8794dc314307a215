"""Evaluating a run's weights in a process of its own (the UI and CLI never load TensorFlow).

``python -m engine.train.evaluate RUN_DIR`` does the work and writes
``eval.json``; this side starts it, waits, and reads the report back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.evaluation import EvalReport

EVAL_TIMEOUT_SECONDS = 3600.0


def evaluate_in_subprocess(run_dir: Path, weights: str = "last", split: str = "validation") -> EvalReport:
    """Run the evaluation and return its report.

    Raises:
        ConfigError: the run cannot be evaluated (no weights, no data): the evaluator's one line.
        RuntimeError: the evaluator failed for another reason (its last lines of output).
    """
    command = [sys.executable, "-m", "engine.train.evaluate", str(run_dir), "--weights", weights, "--split", split]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=EVAL_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL
    )
    if done.returncode == 2:
        line = (done.stderr.strip().splitlines() or ["evaluation refused"])[-1]
        raise ConfigError(line.removeprefix("convdeck: "))
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"evaluation failed (exit {done.returncode}):\n{tail}")
    return EvalReport.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
