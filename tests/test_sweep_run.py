"""A real sweep: 4 trials of lenet5-digits worked by the queue runner, ending with a best trial."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import run_cli, wait_for

from engine.run.queue import ENDED, RunQueue
from engine.run.queue_runner import runner_pid


@pytest.mark.slow
def test_a_four_trial_sweep_on_lenet5_digits_finishes_with_a_best_trial(convdeck_home):
    started = run_cli(
        "sweep", "lenet5-digits",
        "--loguniform", "train.learning_rate=5e-4:5e-3",
        "--set", "train.epochs=2",
        "--trials", "4", "--sampler", "random", "--prune", "median",
        "--name", "lr-search",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "lr-search"
    try:
        def done() -> bool:
            entries = RunQueue(convdeck_home).entries()
            return len(entries) == 4 and all(e.state == ENDED for e in entries)

        assert wait_for(done, timeout=900, interval=1.0)
        shown = run_cli("sweep", "show", "lr-search", "--json")
        rows = json.loads(shown.stdout)
        assert len(rows) == 4 and {r["status"] for r in rows} <= {"finished", "pruned"}
        best = rows[0]
        assert best["status"] == "finished" and best["val_accuracy"] > 0.8
        assert best["run"] and (convdeck_home / "runs" / best["run"]).is_dir()  # an ordinary run
        finished = [r["val_accuracy"] for r in rows if r["status"] == "finished"]
        assert best["val_accuracy"] == max(finished)
        text = run_cli("sweep", "show", "lr-search").stdout
        assert "train.learning_rate" in text.splitlines()[0].lower() or "TRAIN.LEARNING_RATE" in text
    finally:
        pid = runner_pid(convdeck_home)
        if pid and pid > 0:
            os.kill(pid, signal.SIGKILL)
