"""Run health: NaN losses, and workers that die by a signal (the supervisor's report).

The supervisor's reasoning is tested on recorded samples; its process
behaviour (worker.pid, forwarding, mirroring the worker's death) with the
TF-free fake worker; and the whole path with real workers: a NaN pauses or
stops a run without ever checkpointing NaN weights, and a worker killed by
SIGKILL or SIGSEGV shows as ``crashed`` with the signal in ``convdeck runs``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import tensorflow as tf
from conftest import dead_pid, event_dicts, make_run, run_cli, started, step, wait_for
from test_remedies import LiveRuns, start_selected, steps_of

from engine.config import RunConfig
from engine.run import client, supervisor
from engine.run.lock import EXIT_ALREADY_RUNNING, RunLock
from engine.run.store import LOCK_FILE, summarize_run
from engine.run.supervisor import Sample, Supervisor, diagnose

GIB = 1 << 30


# ----- the diagnosis --------------------------------------------------------------------------


def samples(available_gib: float, rss_gib: float = 2.0, total_gib: float = 64.0) -> list[Sample]:
    return [
        Sample(float(t), int(rss_gib * GIB), int(available_gib * GIB), int(total_gib * GIB))
        for t in range(5)
    ]


def test_sigkill_with_host_memory_exhausted_suggests_halving_the_batch():
    report = diagnose(-9, samples(available_gib=0.2, rss_gib=60), run_id="r1")
    assert report["signal"] == "SIGKILL" and report["returncode"] == -9
    assert report["host_memory_low"] is True
    assert "OOM killer" in report["suggestion"] and "host memory ran out" in report["suggestion"]
    assert "convdeck resume r1 --remedy halve-batch" in report["suggestion"]
    assert report["message"].startswith("killed by SIGKILL: ")
    assert report["worker_peak_rss_bytes"] == 60 * GIB


def test_sigkill_with_memory_to_spare_blames_something_outside():
    report = diagnose(-9, samples(available_gib=40), run_id="r1")
    assert report["host_memory_low"] is False
    assert "something outside ended it" in report["suggestion"]
    assert "--remedy" not in report["suggestion"] and "convdeck resume r1" in report["suggestion"]


def test_a_cgroup_oom_kill_counts_as_memory_running_out():
    assert diagnose(-9, samples(available_gib=40), oom_kills=1)["host_memory_low"] is True
    # The worker holding most of the memory is the OOM killer's pick too.
    assert diagnose(-9, samples(available_gib=10, rss_gib=50))["host_memory_low"] is True


def test_sigsegv_is_a_native_fault():
    report = diagnose(-11, samples(available_gib=40), run_id="r1")
    assert report["signal"] == "SIGSEGV"
    assert "a CUDA or native fault" in report["suggestion"]


def test_a_nonzero_exit_without_a_final_event():
    report = diagnose(1, [], run_id="r1")
    assert report["signal"] is None and report["returncode"] == 1
    assert report["message"].startswith("exited with code 1 without a final event")
    assert "worker_rss_bytes" not in report  # never sampled


# ----- the run's status and reason ------------------------------------------------------------


def worker_exit(sig: str = "SIGKILL", final: bool = False, **fields) -> dict:
    number = signal.Signals[sig].value
    return {
        "type": "worker_exit",
        "returncode": -number,
        "signal": sig,
        "final_event": final,
        "host_memory_low": False,
        "suggestion": "resume it",
        "message": f"killed by {sig}: resume it",
        **fields,
    }


def test_a_crash_names_the_signal_in_the_summary(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", [started(), step(1), worker_exit()], pid=dead_pid())
    summary = summarize_run(run_dir)
    assert summary.status == "crashed"
    assert summary.signal == "SIGKILL" and summary.reason == "killed by SIGKILL: resume it"
    assert summary.as_json()["signal"] == "SIGKILL"


def test_a_resumed_worker_that_crashes_is_crashed_not_the_old_failure(convdeck_home):
    failed = {"type": "failed", "error": "out of memory at step 3"}
    events = [started(), step(2), failed, worker_exit("SIGSEGV")]
    summary = summarize_run(make_run(convdeck_home, "r1", events, pid=dead_pid()))
    assert summary.status == "crashed" and summary.signal == "SIGSEGV"


def test_a_signal_after_the_final_event_keeps_the_run_finished(convdeck_home):
    finished = {"type": "finished", "reason": "completed"}
    events = [started(), step(2), finished, worker_exit("SIGSEGV", final=True)]
    summary = summarize_run(make_run(convdeck_home, "r1", events, pid=dead_pid()))
    assert summary.status == "finished" and summary.signal is None


def test_runs_and_show_print_the_reason(convdeck_home):
    make_run(
        convdeck_home, "20250101-000000-a", [started(), step(1), worker_exit()], pid=dead_pid()
    )
    listing = run_cli("runs").stdout
    assert "20250101-000000-a crashed: killed by SIGKILL: resume it" in listing
    shown = run_cli("show", "20250101-000000-a").stdout
    assert "crashed (killed by SIGKILL: resume it)" in shown


# ----- the supervisor process, with the fake worker -------------------------------------------


def _parent_cmdline(pid: int) -> list[str]:
    return psutil.Process(pid).parent().cmdline()


def test_worker_pid_names_the_worker_and_a_segfault_is_reported(convdeck_home, fake_worker):
    fake_worker("serve")
    handle = client.start_run_sync(RunConfig(name="fake"))
    pid = handle.pid()
    assert (handle.run_dir / "worker.pid").read_text().split()[0] == str(pid)
    # (Right after exec, /proc may show an empty command line for a moment.)
    assert wait_for(lambda: "fake_worker" in psutil.Process(pid).cmdline(), timeout=10)
    assert "engine.run.supervisor" in _parent_cmdline(pid)
    assert os.getsid(pid) == pid  # the worker keeps a session of its own
    assert wait_for(lambda: handle.summary().step >= 2, timeout=30)

    os.kill(pid, signal.SIGSEGV)
    assert handle.wait_exit(30)
    assert handle.exit_code() == -signal.SIGSEGV  # the supervisor leaves as the worker did
    (report,) = [e for e in event_dicts(handle.events_path) if e["type"] == "worker_exit"]
    assert report["signal"] == "SIGSEGV" and report["pid"] == pid
    assert report["worker_rss_bytes"] > 0 and report["host_total_bytes"] > 0
    summary = handle.summary()
    assert summary.status == "crashed" and summary.signal == "SIGSEGV"
    assert "CUDA or native fault" in summary.reason


def test_supervisor_forwards_sigterm_and_ignores_sighup(convdeck_home, fake_worker):
    fake_worker("serve")
    handle = client.start_run_sync(RunConfig(name="fake"))
    supervisor_pid = handle.process.supervisor.pid
    assert wait_for(lambda: handle.summary().step >= 1, timeout=30)
    os.kill(supervisor_pid, signal.SIGHUP)  # the ssh link dropping
    reached = handle.summary().step
    assert wait_for(lambda: handle.summary().step >= reached + 3, timeout=30)
    assert handle.is_alive()

    os.kill(supervisor_pid, signal.SIGTERM)  # means stop, as for the worker itself
    assert handle.wait_exit(30) and handle.exit_code() == 0
    events = event_dicts(handle.events_path)
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "stopped"
    assert not any(e["type"] == "worker_exit" for e in events)
    assert handle.summary().status == "stopped"


def test_a_worker_that_cannot_start_is_a_crash_with_its_exit_code(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_WORKER_MODULE", "no_such_worker_module")
    handle = client.start_run_sync(RunConfig(name="fake"))
    assert handle.wait_exit(60) and handle.exit_code() == 1
    summary = handle.summary()
    assert summary.status == "crashed"
    assert summary.reason.startswith("exited with code 1 without a final event")
    assert "No module named no_such_worker_module" in handle.last_log_line()


def test_supervisor_reports_a_kill_while_host_memory_ran_out(tmp_path, monkeypatch):
    low = Sample(0.0, 30 * GIB, 100 << 20, 32 * GIB)
    monkeypatch.setattr(supervisor, "read_sample", lambda pid: low)
    monkeypatch.setattr(supervisor, "SAMPLE_SECONDS", 0.1)
    dies = "import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"
    watcher = Supervisor(tmp_path, [sys.executable, "-c", dies])
    watcher.start()
    assert not (tmp_path / "worker.pid").exists()  # the worker records itself, once it owns the run
    returncode = watcher.wait()
    assert returncode == -signal.SIGKILL
    report = watcher.report(returncode)
    assert report["host_memory_low"] is True
    assert f"convdeck resume {tmp_path.name} --remedy halve-batch" in report["suggestion"]
    assert report["worker_peak_rss_bytes"] == 30 * GIB
    assert event_dicts(tmp_path / "events.jsonl")[-1]["type"] == "worker_exit"


KILLS_ITSELF = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def test_supervisor_reports_nothing_for_a_worker_that_found_its_run_owned(tmp_path):
    refused = f"import sys; sys.exit({EXIT_ALREADY_RUNNING})"
    watcher = Supervisor(tmp_path, [sys.executable, "-c", refused])
    watcher.start()
    assert watcher.wait() == EXIT_ALREADY_RUNNING
    assert watcher.report(EXIT_ALREADY_RUNNING) is None
    assert not (tmp_path / "events.jsonl").exists()


def test_supervisor_does_not_report_after_a_newer_worker_took_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.run.lock.CLAIM_GRACE_SECONDS", 0.1)
    watcher = Supervisor(tmp_path, [sys.executable, "-c", KILLS_ITSELF])
    watcher.start()
    returncode = watcher.wait()
    newer = RunLock.claim(tmp_path / LOCK_FILE)  # a resumed worker, already running
    try:
        assert watcher.report(returncode) is None
    finally:
        newer.release()
    assert not (tmp_path / "events.jsonl").exists()
    assert watcher.report(returncode)["signal"] == "SIGKILL"  # with the run free, it reports


# ----- real workers: NaN, SIGKILL, SIGSEGV ----------------------------------------------------

SCENARIOS: dict[str, tuple[list[str], str]] = {
    "nan-pause": (["train.steps_per_epoch=6", "train.checkpoint_every=2"], "nan:step=3"),
    "nan-stop": (
        ["train.steps_per_epoch=6", "train.checkpoint_every=2", "train.on_nan=stop"],
        "nan:step=3",
    ),
    # A NaN at step 2 pauses these two: idle, alive, until the test kills them.
    "sigkill": (["train.steps_per_epoch=6"], "nan:step=2"),
    "sigsegv": (["train.steps_per_epoch=6"], "nan:step=2"),
}


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[LiveRuns]:
    live = start_selected(request, SCENARIOS)
    yield live
    live.close()


def assert_every_checkpoint_finite(run_dir: Path) -> list[int]:
    """Load every checkpoint kept; all their float tensors are finite. Returns their steps."""
    state = tf.train.get_checkpoint_state(str(run_dir / "checkpoints"))
    steps = []
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), (path, key)
        steps.append(int(path.rsplit("-", 1)[1]))
    return steps


def test_nan_pause_rewinds_to_the_last_good_checkpoint_and_pauses(runs):
    runs.wait_status("nan-pause", "paused")
    (nan,) = runs.of("nan-pause", "nan")
    assert nan["step"] == 3
    run_dir = runs.dirs["nan-pause"]
    assert max(assert_every_checkpoint_finite(run_dir)) == 2
    status = json.loads(runs.cli("ctl", run_dir.name, "status").stdout)
    assert status["paused"] is True

    assert runs.cli("ctl", run_dir.name, "resume").returncode == 0
    final = runs.wait_done("nan-pause")
    assert final["type"] == "finished" and final["reason"] == "completed"
    steps = steps_of(runs.events("nan-pause"))
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6] and steps[-1] == 6  # on from step 2's weights
    assert 6 in assert_every_checkpoint_finite(run_dir)


def test_nan_stop_ends_the_run_with_good_weights(runs):
    final = runs.wait_done("nan-stop")
    assert final["type"] == "finished" and final["reason"] == "nan", runs.describe("nan-stop")
    assert [e["step"] for e in runs.of("nan-stop", "nan")] == [3]
    assert max(assert_every_checkpoint_finite(runs.dirs["nan-stop"])) == 2


def test_sigkill_to_a_real_worker_shows_as_crashed_with_the_signal(runs):
    check_killed(runs, "sigkill", signal.SIGKILL, "something outside")


@pytest.mark.slow  # the fake worker's SIGSEGV test covers the supervisor's side quickly
def test_sigsegv_to_a_real_worker_shows_as_crashed_with_the_signal(runs):
    check_killed(runs, "sigsegv", signal.SIGSEGV, "CUDA or native fault")


def check_killed(runs: LiveRuns, name: str, number: int, why: str) -> None:
    runs.wait_status(name, "paused")
    run_dir = runs.dirs[name]
    pid = int((run_dir / "worker.pid").read_text().split()[0])
    assert "engine.train.worker" in psutil.Process(pid).cmdline()  # the worker, not its supervisor
    os.kill(pid, number)
    runs.wait(name, lambda: summarize_run(run_dir).signal is not None, "crash report")
    listed = json.loads(runs.cli("runs", "--json").stdout)
    row = next(r for r in listed if r["run_id"] == run_dir.name)
    signame = signal.Signals(number).name
    assert row["status"] == "crashed" and row["signal"] == signame
    assert row["reason"].startswith(f"killed by {signame}: ") and why in row["reason"]
    table = runs.cli("runs").stdout
    assert f"{run_dir.name} crashed: killed by {signame}" in table
    (report,) = runs.of(name, "worker_exit")
    assert report["pid"] == pid and report["host_memory_low"] is False
