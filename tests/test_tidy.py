"""``convdeck rm`` and ``convdeck prune``: the run store tidied, a live run never touched.

Runs are fabricated with ``make_run``; a live one is a real (TF-free) worker
process from tests/fake_worker.py, so liveness is asked the way it is in use.
"""

from __future__ import annotations

import os
import time

import pytest
from conftest import dead_pid, make_run, one_line_error, run_cli, started, step, wait_for

from engine.errors import ConfigError
from engine.run import tidy
from engine.run.store import Liveness, summarize_run, worker_liveness

DAY = 86400.0
FAILED = {"type": "failed", "error": "ConfigError: folder:/x: no such folder", "user_error": True}
FINISHED = {"type": "finished", "reason": "completed", "loss": 0.1, "steps": 3}


def age(run_dir, seconds: float) -> None:
    """Make a run look untouched for ``seconds``: its files and its directory."""
    when = time.time() - seconds
    for path in (run_dir / "events.jsonl", run_dir / "config.toml", run_dir):
        os.utime(path, (when, when))


def store(home) -> dict[str, str]:
    """A run of each ending, each as old as its name says."""
    runs = {
        "20250101-finished-old": [started(), step(1), FINISHED],
        "20250102-failed-old": [started(), FAILED],
        "20250103-crashed-old": [started(), step(1)],
        "20250104-failed-new": [started(), FAILED],
        "20250105-finished-new": [started(), step(1), FINISHED],
    }
    for run_id, events in runs.items():
        run_dir = make_run(home, run_id, events, pid=dead_pid() if "crashed" in run_id else None)
        age(run_dir, 10 * DAY if run_id.endswith("old") else 60)
    return {run_id: summarize_run(home / "runs" / run_id).status for run_id in runs}


def unchanged_for(path, seconds: float) -> bool:
    size = path.stat().st_size
    time.sleep(seconds)
    return path.stat().st_size == size


def remaining(home) -> list[str]:
    return sorted(path.name for path in (home / "runs").iterdir())


@pytest.fixture
def live_run(convdeck_home, fake_worker) -> str:
    """A detached fake worker, serving until stopped; its run id."""
    fake_worker("serve")
    result = run_cli("run", "--detach")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[-1]
    assert wait_for(lambda: worker_liveness(convdeck_home / "runs" / run_id).pid is not None, 10)
    return run_id


# -- rm --------------------------------------------------------------------------------


def test_rm_removes_the_named_runs(convdeck_home):
    statuses = store(convdeck_home)
    assert statuses["20250102-failed-old"] == "failed" and statuses["20250103-crashed-old"] == "crashed"
    result = run_cli("rm", "20250101", "20250103-crashed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "removed 20250101-finished-old (finished)",
        "removed 20250103-crashed-old (crashed)",
    ]
    assert remaining(convdeck_home) == ["20250102-failed-old", "20250104-failed-new", "20250105-finished-new"]


def test_rm_removes_nothing_when_one_name_is_wrong(convdeck_home):
    store(convdeck_home)
    assert "no run matches 'nope'" in one_line_error(run_cli("rm", "20250101", "nope"))
    assert "matches 5 runs" in one_line_error(run_cli("rm", "2025"))
    assert len(remaining(convdeck_home)) == 5


def test_rm_refuses_a_live_run_and_says_how_to_stop_it(convdeck_home, live_run):
    store(convdeck_home)
    error = one_line_error(run_cli("rm", "20250101", live_run))
    assert error.startswith(f"convdeck: run {live_run} is running (worker pid ")
    assert f"stop it with `convdeck ctl {live_run} stop`, then remove it" in error
    assert live_run in remaining(convdeck_home) and "20250101-finished-old" in remaining(convdeck_home)

    assert run_cli("ctl", live_run, "stop").returncode == 0
    assert wait_for(lambda: worker_liveness(convdeck_home / "runs" / live_run).pid is None, 10)
    result = run_cli("rm", live_run)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"removed {live_run} (stopped)\n"
    assert live_run not in remaining(convdeck_home)


def test_a_hung_worker_is_refused_too(convdeck_home, monkeypatch):
    run_dir = make_run(convdeck_home, "r1", [started()])
    monkeypatch.setattr(tidy, "worker_liveness", lambda _: Liveness(4242, hung=True))
    with pytest.raises(ConfigError, match=r"run r1 is hung \(worker pid 4242\); end it with `kill 4242`"):
        tidy.remove_runs(["r1"], convdeck_home)
    assert run_dir.exists()


# -- prune -----------------------------------------------------------------------------


def test_prune_failed_removes_failed_runs_only(convdeck_home, live_run):
    store(convdeck_home)
    result = run_cli("prune", "--failed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "removed 20250102-failed-old (failed, idle 1w)",
        "removed 20250104-failed-new (failed, idle 1m)",
    ]
    # Crashed runs are kept (they may resume), and so is the live one.
    assert remaining(convdeck_home) == sorted(
        ["20250101-finished-old", "20250103-crashed-old", "20250105-finished-new", live_run]
    )


def test_prune_older_than_previews_then_removes(convdeck_home, live_run):
    store(convdeck_home)
    assert run_cli("ctl", live_run, "pause").returncode == 0  # it writes no more events
    assert wait_for(lambda: unchanged_for(convdeck_home / "runs" / live_run / "events.jsonl", 0.2), 10)
    age(convdeck_home / "runs" / live_run, 30 * DAY)  # old, but alive: never pruned
    preview = run_cli("prune", "--older-than", "7d", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.splitlines() == [
        "would remove 20250101-finished-old (finished, idle 1w)",
        "would remove 20250102-failed-old (failed, idle 1w)",
        "would remove 20250103-crashed-old (crashed, idle 1w)",
    ]
    assert len(remaining(convdeck_home)) == 6

    result = run_cli("prune", "--older-than", "7d")
    assert result.stdout == preview.stdout.replace("would remove", "removed")
    assert remaining(convdeck_home) == sorted(["20250104-failed-new", "20250105-finished-new", live_run])
    assert run_cli("prune", "--older-than", "7d").stdout == "nothing to prune\n"


def test_prune_filters_combine(convdeck_home):
    store(convdeck_home)
    removed = tidy.prune_runs(failed=True, older_than=7 * DAY, home=convdeck_home)
    assert [removal.run_id for removal in removed] == ["20250102-failed-old"]
    removed = tidy.prune_runs(older_than=30, home=convdeck_home)
    assert len(removed) == 4 and remaining(convdeck_home) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["prune"], "prune needs --failed, --older-than AGE, or both"),
        (["prune", "--older-than", "7"], "--older-than '7': expected a number and a unit (m, h, d or w)"),
        (["prune", "--older-than", "a week"], "e.g. 30m, 12h or 7d"),
        (["rm"], "Missing argument 'RUN...'"),
    ],
)
def test_bad_prune_and_rm_input_is_one_line(convdeck_home, args, expected):
    store(convdeck_home)
    assert expected in one_line_error(run_cli(*args))
    assert len(remaining(convdeck_home)) == 5


def test_ages():
    assert [tidy.parse_age(text) for text in ("30m", "12h", "7d", "2w", "1.5h")] == [
        1800,
        43200,
        7 * DAY,
        14 * DAY,
        5400,
    ]
    assert [tidy.format_age(seconds) for seconds in (59, 61, 3 * 3600, 2 * DAY, 9 * DAY)] == [
        "0m",
        "1m",
        "3h",
        "2d",
        "1w",
    ]
