"""engine.run.store: run ids, run directories, resolving a run, and each run's status."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import conftest
import psutil
import pytest
from conftest import cli_command, one_line_error, run_cli

from engine.config import ConfigError, RunConfig, config_to_toml, validate_config
from engine.run import store as runs
from engine.run.events import EVENTS_FILE
from engine.run.facts import STATUSES
from engine.run.store import (
    CONFIG_FILE,
    HEARTBEAT_FILE,
    HEARTBEAT_STALE_SECONDS,
    PID_FILE,
    convdeck_home,
    create_run_dir,
    list_run_dirs,
    list_runs,
    new_run_id,
    read_config,
    resolve_run,
    summarize_run,
    worker_alive,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVDECK_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_run(home: Path, run_id: str, config: RunConfig | None = None) -> Path:
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text('name = "x"\n')
    if config is not None:
        runs.write_config(run_dir, config)
    return run_dir


# The events' time. A live run whose last step is old would rightly read as stalled; these
# fabricated runs are judged on their events alone (stalls: tests/test_facts.py).
EVENT_TIME = round(time.time(), 3)


@pytest.fixture(autouse=True)
def no_stall_verdicts(monkeypatch):
    monkeypatch.setenv("CONVDECK_STALL_MIN_SECONDS", "1e12")


def write_events(run_dir: Path, *events: dict, torn: str = "") -> None:
    with open(run_dir / EVENTS_FILE, "a") as handle:
        for event in events:
            handle.write(json.dumps({"time": EVENT_TIME, **event}) + "\n")
        handle.write(torn)


def mark_alive(run_dir: Path, heartbeat_age: float | None = 0.0) -> None:
    """Record this test process as the run's worker, with a heartbeat of a given age."""
    created = psutil.Process().create_time()
    (run_dir / PID_FILE).write_text(f"{os.getpid()} {created}")
    if heartbeat_age is not None:
        beat = run_dir / HEARTBEAT_FILE
        beat.touch()
        stamp = time.time() - heartbeat_age
        os.utime(beat, (stamp, stamp))


def started(name: str = "lenet5-digits") -> dict:
    return {"type": "run_started", "config": {"name": name}, "run_id": "r", "pid": 1}


def step(number: int, loss: float, epoch: int = 1) -> dict:
    return {"type": "step", "step": number, "epoch": epoch, "loss": loss, "accuracy": 0.5}


def test_convdeck_home_follows_the_environment(home, monkeypatch):
    assert convdeck_home() == home
    monkeypatch.delenv("CONVDECK_HOME")
    assert convdeck_home() == Path.home() / ".convdeck"


def test_new_run_id_names_the_preset_and_is_filesystem_safe():
    run_id = new_run_id("resnet18-cifar10")
    assert "resnet18-cifar10" in run_id
    odd = new_run_id("a/b c:d")
    assert "/" not in odd and " " not in odd and ":" not in odd


def test_new_run_id_sorts_by_time(monkeypatch):
    clock = iter([time.gmtime(1_700_000_000 + n) for n in (0, 1, 59, 3600)])
    monkeypatch.setattr(time, "gmtime", lambda *args: next(clock))
    # Later runs sort later even when the preset name would sort earlier.
    ids = [new_run_id(name) for name in ("zzz", "mmm", "aaa", "aaa")]
    assert sorted(ids) == ids
    assert len(set(ids)) == 4


def test_new_run_id_differs_within_one_second():
    first, second = new_run_id("same"), new_run_id("same")
    assert first != second


def test_create_run_dir_is_private_and_holds_the_config(home):
    config = validate_config({"name": "resnet18-cifar10", "model": {"arch": "resnet"}})
    run_dir = create_run_dir(config)
    assert run_dir.parent == home / "runs"
    assert run_dir.name.split("-")[-2] == "cifar10"
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert (run_dir / "checkpoints").is_dir()
    assert read_config(run_dir) == config


def test_create_run_dir_twice_gives_two_runs(home):
    config = RunConfig(name="same")
    first, second = create_run_dir(config), create_run_dir(config)
    assert first != second
    assert list_run_dirs() == sorted([first, second])


def test_create_run_dir_survives_an_id_collision(home, monkeypatch):
    # Two runs of one preset started in the same second may draw the same
    # random tail; the second must still get a directory of its own.
    monkeypatch.setattr(runs.secrets, "token_hex", lambda nbytes=None: "beef")
    monkeypatch.setattr(
        time, "gmtime", lambda *args: time.struct_time((2024, 1, 1, 0, 0, 0, 0, 1, 0))
    )
    first = create_run_dir(RunConfig(name="same"))
    second = create_run_dir(RunConfig(name="same"))
    assert first != second
    assert read_config(second).name == "same"


def test_read_config_ignores_revisions(home):
    run_dir = make_run(home, "20240101-000000-x-0000")
    config = RunConfig(name="x")
    runs.write_config(
        run_dir, config, history=[{"revision": 1, "reason": "oom", "batch_size": 128}]
    )
    assert read_config(run_dir) == config
    assert runs.read_config_revisions(run_dir) == [
        {"revision": 1, "reason": "oom", "batch_size": 128}
    ]


def test_read_config_of_a_broken_file_is_one_line(home):
    run_dir = make_run(home, "20240101-000000-x-0000")
    (run_dir / CONFIG_FILE).write_text('name = "x"\n[model]\n[data]\n[train]\nbatch_size = 0\n')
    with pytest.raises(ConfigError) as caught:
        read_config(run_dir)
    assert str(run_dir / CONFIG_FILE) in str(caught.value)
    assert "train.batch_size" in str(caught.value)


def test_list_run_dirs_skips_directories_without_config(home):
    good = make_run(home, "20240101-000000-a-0000")
    (home / "runs" / "20240101-000001-half-made").mkdir()
    (home / "runs" / "stray-file").write_text("")
    assert list_run_dirs() == [good]


def test_list_run_dirs_without_runs(home):
    assert list_run_dirs() == []
    assert list_runs() == []


@pytest.fixture
def three_runs(home):
    return [
        make_run(home, "20240101-000000-lenet5-digits-aaaa"),
        make_run(home, "20240101-000000-lenet5-digits-aaab"),
        make_run(home, "20240102-000000-resnet18-cifar10-cccc"),
    ]


def test_resolve_run_exact(three_runs):
    assert resolve_run("20240101-000000-lenet5-digits-aaab") == three_runs[1]


def test_resolve_run_unique_prefix(three_runs):
    assert resolve_run("20240102") == three_runs[2]
    assert resolve_run("20240101-000000-lenet5-digits-aaaa") == three_runs[0]


def test_resolve_run_exact_wins_over_longer_ids(home):
    short = make_run(home, "20240101-000000-x")
    make_run(home, "20240101-000000-x-more")
    assert resolve_run("20240101-000000-x") == short


def test_resolve_run_ambiguous_names_the_matches(three_runs):
    with pytest.raises(ConfigError) as caught:
        resolve_run("20240101")
    message = str(caught.value)
    assert "matches 2 runs" in message
    assert three_runs[0].name in message and three_runs[1].name in message
    assert three_runs[2].name not in message


def test_resolve_run_no_match(three_runs):
    with pytest.raises(ConfigError) as caught:
        resolve_run("1999")
    message = str(caught.value)
    assert "no run matches '1999'" in message
    assert three_runs[2].name in message  # the newest, as a hint


def test_resolve_run_when_there_are_no_runs(home):
    with pytest.raises(ConfigError, match="no runs yet"):
        resolve_run("anything")


def test_finished_run(home, dead_pid):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir,
        started("lenet5-digits"),
        step(1, 2.3),
        step(2, 1.9),
        {"type": "epoch_end", "epoch": 1, "val_loss": 1.0, "val_accuracy": 0.91},
        step(3, 1.2, epoch=2),
        {"type": "finished", "loss": 1.2},
    )
    (run_dir / PID_FILE).write_text(f"{dead_pid} 0")
    summary = summarize_run(run_dir)
    assert summary.status == "finished"
    assert summary.preset == "lenet5-digits"
    assert (summary.step, summary.epoch, summary.last_loss) == (3, 2, 1.2)
    assert summary.val_accuracy == 0.91
    assert summary.started == EVENT_TIME
    assert summary.pid is None
    assert summary.as_json()["run_dir"] == str(run_dir)
    json.dumps(summary.as_json(), allow_nan=False)


def test_stopped_run(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), {"type": "finished", "reason": "stopped"})
    summary = summarize_run(run_dir)
    assert summary.status == "stopped"
    assert summary.reason == "stopped by request"


def test_failed_run(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), {"type": "failed", "error": "ValueError: boom"})
    summary = summarize_run(run_dir)
    assert summary.status == "failed"
    assert summary.reason == "ValueError: boom"


def test_terminal_event_decides_while_the_worker_exits(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), {"type": "finished"})
    mark_alive(run_dir)
    assert summarize_run(run_dir).status == "finished"


def test_crashed_run_dead_pid(home, dead_pid):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), step(2, 1.5))
    (run_dir / PID_FILE).write_text(f"{dead_pid} {time.time() - 5}")
    (run_dir / HEARTBEAT_FILE).touch()
    summary = summarize_run(run_dir)
    assert summary.status == "crashed"
    assert summary.pid is None
    assert (summary.step, summary.last_loss) == (2, 1.5)


def test_crashed_run_without_pid_file(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0))
    assert summarize_run(run_dir).status == "crashed"


def test_crashed_run_when_the_pid_was_reused(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0))
    (run_dir / PID_FILE).write_text(f"{os.getpid()} 12345.0")
    (run_dir / HEARTBEAT_FILE).touch()
    assert summarize_run(run_dir).status == "crashed"


@pytest.mark.parametrize("text", ["", "garbage", "12 not-a-time"])
def test_unreadable_pid_file_means_not_alive(home, text):
    run_dir = make_run(home, "20240101-000000-a-0000")
    (run_dir / PID_FILE).write_text(text)
    assert worker_alive(run_dir) is None


def test_running_run(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), step(2, 1.75))
    mark_alive(run_dir)
    summary = summarize_run(run_dir)
    assert summary.status == "running"
    assert summary.pid == os.getpid()
    assert (summary.step, summary.last_loss) == (2, 1.75)


def test_running_run_before_its_first_heartbeat(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started())
    mark_alive(run_dir, heartbeat_age=None)
    assert summarize_run(run_dir).status == "running"


def test_stale_heartbeat_of_a_live_owner_means_hung(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0))
    mark_alive(run_dir, heartbeat_age=HEARTBEAT_STALE_SECONDS + 60)
    summary = summarize_run(run_dir)
    assert summary.status == "hung" and not summary.live
    assert summary.pid == os.getpid()
    assert "hung" in summary.reason
    assert worker_alive(run_dir) is None


def test_paused_and_resumed_run(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), {"type": "paused", "step": 1})
    mark_alive(run_dir)
    assert summarize_run(run_dir).status == "paused"
    write_events(run_dir, {"type": "resumed", "step": 1})
    assert summarize_run(run_dir).status == "running"


def test_waiting_for_a_remedy_after_oom(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir,
        started(),
        step(1, 2.0),
        {
            "type": "oom",
            "step": 2,
            "batch_size": 256,
            "message": "OOM",
            "remedies": ["halve-batch"],
        },
    )
    mark_alive(run_dir)
    assert summarize_run(run_dir).status == "waiting"
    write_events(run_dir, {"type": "remedy_applied", "name": "halve-batch"})
    assert summarize_run(run_dir).status == "running"


def test_oom_that_does_not_wait_is_not_waiting(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), {"type": "oom", "step": 2, "waiting": False})
    mark_alive(run_dir)
    assert summarize_run(run_dir).status == "running"


def test_resumed_run_after_stop_is_running_again(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir,
        started(),
        step(1, 2.0),
        {"type": "finished", "reason": "stopped"},
        started(),
        step(2, 1.5),
    )
    mark_alive(run_dir)
    summary = summarize_run(run_dir)
    assert summary.status == "running"
    assert summary.started == EVENT_TIME
    assert summary.step == 2


def test_torn_last_line_is_skipped(home, dead_pid):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir, started(), step(1, 2.0), step(2, 1.5), torn='{"type": "step", "step": 3, "lo'
    )
    (run_dir / PID_FILE).write_text(f"{dead_pid} 0")
    summary = summarize_run(run_dir)
    assert summary.status == "crashed"
    assert (summary.step, summary.last_loss) == (2, 1.5)


def test_batched_step_line_gives_the_last_step(home):
    # DESIGN: a step event "may be batched several steps to a line" (lists).
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir,
        started(),
        {"type": "step", "step": [1, 2, 3], "epoch": [1, 1, 1], "loss": [2.0, 1.8, 1.6]},
    )
    mark_alive(run_dir)
    summary = summarize_run(run_dir)
    assert (summary.step, summary.epoch, summary.last_loss) == (3, 1, 1.6)


def test_run_without_events(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    summary = summarize_run(run_dir)
    assert summary.status == "crashed"
    assert (summary.preset, summary.step, summary.last_loss) == ("?", 0, None)


def test_a_resumed_running_run_is_running_with_no_old_reason_or_final_figures(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(
        run_dir,
        started(),
        step(1, 2.0),
        {"type": "finished", "reason": "stopped", "steps": 1, "best_val_accuracy": None},
        {**started(), "resumed_from_step": 1},
        step(2, 1.5),
    )
    mark_alive(run_dir)
    facts = summarize_run(run_dir)
    assert (facts.status, facts.reason, facts.final, facts.resumes) == ("running", "", None, 1)
    assert facts.metrics_json()["final"] is None


def test_a_remedy_that_switches_the_model_is_what_the_run_trains_now(home):
    run_dir = make_run(home, "20240101-000000-a-0000")
    config = {"name": "lenet5-digits", "model": {"arch": "lenet5", "blocks": [2, 2, 2, 2]}}
    write_events(
        run_dir,
        {**started(), "config": config},
        step(1, 2.0),
        {
            "type": "remedy_applied",
            "name": "resnet18",
            "revision": 1,
            "changes": {"model.arch": ["lenet5", "resnet"]},
        },
    )
    mark_alive(run_dir)
    facts = summarize_run(run_dir)
    assert (facts.preset, facts.model, facts.revision) == ("lenet5-digits", "resnet [2,2,2,2]", 1)
    assert facts.phase == "restarting" and facts.status == "running"


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "run_started", "config": "notadict"},
        {"type": "failed", "error": 5},
        {"type": "step", "step": 1e400, "loss": 1.0},
        {"type": "epoch_end", "epoch": "x"},
    ],
)
def test_a_wrong_typed_line_is_skipped_and_counted_not_fatal(home, bad, dead_pid):
    run_dir = make_run(home, "20240101-000000-a-0000")
    write_events(run_dir, started(), step(1, 2.0), bad, step(2, 1.5))
    (run_dir / PID_FILE).write_text(f"{dead_pid} 0")
    facts = summarize_run(run_dir)
    assert (facts.status, facts.step, facts.preset) == ("crashed", 2, "lenet5-digits")
    assert facts.unreadable_lines == 1
    json.dumps(facts.as_json(), allow_nan=False)
    json.dumps(facts.metrics_json(), allow_nan=False)


def test_list_runs_summarizes_oldest_first(home):
    old = make_run(home, "20240101-000000-a-0000")
    new = make_run(home, "20240102-000000-b-0000")
    write_events(old, started("a"), {"type": "finished"})
    write_events(new, started("b"), {"type": "failed", "error": "x"})
    summaries = list_runs()
    assert [s.run_dir for s in summaries] == [old, new]
    assert [(s.preset, s.status) for s in summaries] == [("a", "finished"), ("b", "failed")]
    assert all(s.status in STATUSES for s in summaries)


# -- a run's config.toml: never read as the defaults -------------------------------------------


def whole_config_text() -> str:
    return config_to_toml(RunConfig(name="lenet5-digits"))


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n"])
def test_an_empty_config_is_refused_not_read_as_the_defaults(home, text):
    run_dir = make_run(home, "20240101-000000-x-0000")
    (run_dir / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config(run_dir)
    message = str(caught.value)
    assert message.startswith(f"{run_dir / CONFIG_FILE}: empty;") and "\n" not in message


def test_a_config_cut_before_a_section_is_refused(home):
    run_dir = make_run(home, "20240101-000000-x-0000")
    text = whole_config_text()
    (run_dir / CONFIG_FILE).write_text(text[: text.index("[train]")])
    with pytest.raises(ConfigError, match=r"cut short: it has no \[train\]"):
        read_config(run_dir)


def test_a_config_cut_mid_line_is_refused(home):
    run_dir = make_run(home, "20240101-000000-x-0000")
    text = whole_config_text()
    # "epochs = 10" cut to "epochs = 1": valid TOML, and the wrong run.
    (run_dir / CONFIG_FILE).write_text(text[: text.index("epochs = ") + len("epochs = 1")])
    with pytest.raises(ConfigError, match="cut short: its last line has no end"):
        read_config(run_dir)


def test_a_config_from_an_older_version_takes_defaults_for_fields_added_since(home):
    run_dir = make_run(home, "20240101-000000-x-0000")
    text = whole_config_text().replace("keep_checkpoints = 3\n", "")
    (run_dir / CONFIG_FILE).write_text(text)
    assert read_config(run_dir) == RunConfig(name="lenet5-digits")


def test_resume_of_a_run_with_an_empty_config_is_one_line_and_starts_nothing(convdeck_home):
    run_dir = conftest.make_run(convdeck_home, "r1", [conftest.started(), conftest.step(1)])
    (run_dir / CONFIG_FILE).write_text("")
    before = sorted(p.name for p in run_dir.iterdir())
    error = one_line_error(run_cli("resume", "r1"))
    assert f"{run_dir / CONFIG_FILE}: empty" in error
    assert sorted(p.name for p in run_dir.iterdir()) == before


# -- a home or run directory that cannot be written ---------------------------------------------


def run_cli_read_only(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """``convdeck ARGS`` with ``directory`` read-only: by its mode, or for root by a read-only mount."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            return run_cli(*args)
        finally:
            directory.chmod(mode)
    # Root writes through any mode: a read-only bind mount in a mount namespace of its own.
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(directory), *cli_command(), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode not in (0, 1, 2) or "mount:" in result.stderr or "unshare:" in result.stderr:
        pytest.skip(f"no read-only mount here: {result.stderr.strip()}")
    return result


def test_create_run_dir_where_nothing_can_be_made_is_one_line(home):
    (home / "not-a-dir").write_text("")
    with pytest.raises(ConfigError) as caught:
        create_run_dir(RunConfig(name="x"), home / "not-a-dir")
    assert str(caught.value).startswith(f"cannot create a run in {home / 'not-a-dir' / 'runs'}: ")
    assert "CONVDECK_HOME" in str(caught.value)


def test_run_in_a_read_only_home_is_one_line_exit_2(convdeck_home):
    (convdeck_home / "runs").mkdir()
    error = one_line_error(run_cli_read_only(convdeck_home / "runs", "run", "lenet5-digits"))
    assert error.startswith(f"convdeck: cannot create a run in {convdeck_home / 'runs'}: ")
    assert list((convdeck_home / "runs").iterdir()) == []


def test_resume_in_a_read_only_run_directory_is_one_line_exit_2(convdeck_home):
    run_dir = conftest.make_run(convdeck_home, "r1", [conftest.started(), conftest.step(1)])
    before = sorted(p.name for p in run_dir.iterdir())
    error = one_line_error(run_cli_read_only(run_dir, "resume", "r1"))
    assert f"cannot resume run r1: {run_dir} is not writable" in error
    assert sorted(p.name for p in run_dir.iterdir()) == before
