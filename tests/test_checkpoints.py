"""Checkpoints that recover (issue 10, item 5): ``convdeck resume`` on a damaged checkpoints/.

One real LeNet-5 run on the digits (12 steps, a checkpoint every 4: ckpt-4,
ckpt-8 and ckpt-12 kept) is trained once; each test damages a copy of it as a
crash, a full disk or a stray ``rm`` would, then resumes it through the CLI
as a user does. The TF-free half (file names, the pre-spawn check) is tested
on fabricated runs, without a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import cli_command, event_dicts, make_run, one_line_error, run_cli, started, step

from engine.config import ConfigError
from engine.run.checkpoint_files import (
    check_something_to_resume,
    list_checkpoints,
    set_aside_for_scratch,
    unfinished_saves,
)

SMALL = (
    "--set", "train.epochs=1",
    "--set", "train.steps_per_epoch=12",
    "--set", "train.checkpoint_every=4",
    "--set", "train.on_nan=stop",
)  # fmt: skip
DEADLINE = 300.0


@pytest.fixture(scope="module")
def trained_run() -> Iterator[Path]:
    """A run that trained 12 steps and then, as far as its record says, crashed."""
    home = Path(tempfile.mkdtemp(prefix="cdk-base-", dir="/tmp"))
    env = {**os.environ, "CONVDECK_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [*cli_command(), "run", "lenet5-digits", *SMALL, "--json"],
        capture_output=True, text=True, timeout=DEADLINE, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run_dir,) = (home / "runs").iterdir()
    _wait_gone(int((run_dir / "worker.pid").read_text().split()[0]))
    # Without its final event the run reads as crashed, which `resume` accepts.
    events = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join(e for e in events if '"type": "finished"' not in e))
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [12, 8, 4]
    yield run_dir
    shutil.rmtree(home, ignore_errors=True)


def _wait_gone(pid: int) -> None:
    """The CLI returns once the run has ended; its worker may take a moment more to exit."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=60)


@pytest.fixture
def run_dir(trained_run: Path, convdeck_home: Path) -> Path:
    """A fresh copy of the trained run in this test's home."""
    copy = convdeck_home / "runs" / trained_run.name
    shutil.copytree(trained_run, copy)
    return copy


def checkpoints(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def resume(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("resume", run_dir.name, *args, timeout=DEADLINE)


def resumed_events(run_dir: Path, before: int) -> list[dict]:
    """The events the resume added."""
    return event_dicts(run_dir / "events.jsonl")[before:]


def event_count(run_dir: Path) -> int:
    return len(event_dicts(run_dir / "events.jsonl"))


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def state_file_names(run_dir: Path) -> list[str]:
    """The checkpoints the state file names: latest first, then the kept list."""
    names = []
    for line in (checkpoints(run_dir) / "checkpoint").read_text().splitlines():
        key, _, value = line.partition(": ")
        if key in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            names.append(json.loads(value))
    return names


def assert_completed_from(run_dir: Path, before: int, step: int) -> list[dict]:
    events = resumed_events(run_dir, before)
    (run_started,) = of(events, "run_started")
    assert run_started["resumed_from_step"] == step
    assert events[-1]["type"] == "finished" and events[-1]["reason"] == "completed", events[-1]
    return events


# -- the newest checkpoint is damaged: fall back to the newest intact one ------------------


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate_data", "Read less bytes than requested"),
        ("delete_index", "its .index file is missing"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(run_dir, damage, reason):
    newest = checkpoints(run_dir) / "ckpt-12"
    if damage == "truncate_data":
        os.truncate(f"{newest}.data-00000-of-00001", 1000)
    else:
        os.remove(f"{newest}.index")
    before = event_count(run_dir)

    result = resume(run_dir)

    assert result.returncode == 0, result.stderr
    # The person following it reads which checkpoint was skipped, why, and which is used.
    said = next(line for line in result.stdout.splitlines() if "ckpt-12 is damaged" in line)
    assert reason in said and "resuming from ckpt-8 (step 8)" in said, said
    events = assert_completed_from(run_dir, before, 8)
    (fallback,) = of(events, "checkpoint_fallback")
    aside = run_dir / "checkpoints.damaged" / "ckpt-12"
    assert fallback["skipped_step"] == 12 and fallback["skipped_path"] == str(newest)
    assert fallback["used_step"] == 8 and fallback["used_path"] == str(checkpoints(run_dir) / "ckpt-8")
    assert reason in fallback["reason"] and fallback["moved_to"] == str(aside)
    # The damaged files are kept, out of the way; the resumed run saved its own step 12.
    left = {"truncate_data": ["ckpt-12.data-00000-of-00001", "ckpt-12.index"],
            "delete_index": ["ckpt-12.data-00000-of-00001"]}[damage]  # fmt: skip
    assert sorted(p.name for p in aside.iterdir()) == left
    steps = [s for e in of(events, "step") for s in (e["step"] if isinstance(e["step"], list) else [e["step"]])]
    assert steps == [9, 10, 11, 12]
    assert state_file_names(run_dir)[0] == "ckpt-12"


def test_no_intact_checkpoint_is_one_line_exit_2_then_from_scratch_sets_them_aside(run_dir):
    for data in checkpoints(run_dir).glob("*.data-*"):
        os.truncate(data, 10)
    before_files = sorted(p.name for p in checkpoints(run_dir).iterdir())

    error = one_line_error(resume(run_dir))

    assert "no intact checkpoint" in error
    assert all(f"ckpt-{n} (IndexError: Read less bytes than requested)" in error for n in (12, 8, 4))
    assert f"convdeck resume {run_dir.name} --from-scratch" in error
    assert sorted(p.name for p in checkpoints(run_dir).iterdir()) == before_files
    assert not (run_dir / "checkpoints.damaged").exists()

    refused = event_count(run_dir)
    result = resume(run_dir, "--from-scratch", "--json")

    assert result.returncode == 0, result.stderr
    assert_completed_from(run_dir, refused, None)
    aside = run_dir / "checkpoints.before-scratch"
    assert sorted(p.name for p in aside.iterdir()) == before_files
    assert [c.step for c in list_checkpoints(checkpoints(run_dir))] == [12, 8, 4]


# -- the state file ------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["garbage", "missing"])
def test_a_garbage_or_missing_state_file_is_rebuilt_from_the_files(run_dir, state):
    state_file = checkpoints(run_dir) / "checkpoint"
    if state == "garbage":
        state_file.write_bytes(b"\xff\xfe model_checkpoint_path: {{{\n")
    else:
        state_file.unlink()
    before = event_count(run_dir)

    result = resume(run_dir)

    assert result.returncode == 0, result.stderr
    assert "rebuilt checkpoints/checkpoint from the checkpoint files present (it was " in result.stdout
    assert_completed_from(run_dir, before, 12)  # not step 0: the good files were found
    # Every checkpoint on disk is the manager's again, so it sweeps them as it goes.
    assert state_file_names(run_dir) == ["ckpt-12", "ckpt-4", "ckpt-8", "ckpt-12"]


# -- a save cut short ----------------------------------------------------------------------------


def test_a_save_cut_short_leaves_nothing_behind_after_resume(run_dir):
    unfinished = checkpoints(run_dir) / "ckpt-16_temp"
    unfinished.mkdir()
    (unfinished / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
    before = event_count(run_dir)

    result = resume(run_dir)

    assert result.returncode == 0, result.stderr
    assert "removed ckpt-16_temp/, left by a save that was cut short" in result.stdout
    assert not unfinished.exists()
    assert_completed_from(run_dir, before, 12)


# -- nothing left: refuse, unless --from-scratch ----------------------------------------------------


def test_all_checkpoints_gone_refuses_before_any_worker_then_from_scratch_starts_over(run_dir):
    for path in checkpoints(run_dir).iterdir():
        if path.is_file():  # every rolling checkpoint; best/ stays, and is no checkpoint to resume from
            path.unlink()
    assert (checkpoints(run_dir) / "best").is_dir()
    before = event_count(run_dir)

    error = one_line_error(resume(run_dir))

    assert "has nothing to resume from" in error and "recorded a checkpoint at step 12" in error
    assert "--from-scratch" in error
    assert event_count(run_dir) == before, "a worker was started"

    result = resume(run_dir, "--from-scratch", "--json")

    assert result.returncode == 0, result.stderr
    events = assert_completed_from(run_dir, before, None)
    assert any("starting again from step 0" in e.get("message", "") for e in of(events, "log"))
    assert [c.step for c in list_checkpoints(checkpoints(run_dir))] == [12, 8, 4]


# -- TF-free: names on disk, and the check before spawning -------------------------------------------


def test_list_checkpoints_groups_files_by_step_newest_first(tmp_path):
    for name in ["ckpt-4.index", "ckpt-4.data-00000-of-00001", "ckpt-12.data-00000-of-00002",
                 "ckpt-12.data-00001-of-00002", "ckpt-100.index", "checkpoint", "ckpt-x.index",
                 "notes.txt"]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "ckpt-16_temp").mkdir()

    found = list_checkpoints(tmp_path)

    assert [(c.step, c.name, c.has_index, len(c.files)) for c in found] == [
        (100, "ckpt-100", True, 1),
        (12, "ckpt-12", False, 2),
        (4, "ckpt-4", True, 2),
    ]
    assert unfinished_saves(tmp_path) == [tmp_path / "ckpt-16_temp"]
    assert list_checkpoints(tmp_path / "missing") == [] and unfinished_saves(tmp_path / "missing") == []


def test_a_run_that_never_saved_a_checkpoint_may_start_over(convdeck_home):
    # Its worker died before the step-0 checkpoint: nothing trained, nothing to lose.
    run_dir = make_run(convdeck_home, "r1", [started(), step(1)])
    check_something_to_resume(run_dir)


@pytest.mark.parametrize("evidence", ["event", "state_file"])
def test_a_run_whose_checkpoints_are_all_gone_is_refused(convdeck_home, evidence):
    events = [started(), step(1)]
    if evidence == "event":
        events.append({"type": "checkpoint", "step": 1, "path": "x/ckpt-1"})
    run_dir = make_run(convdeck_home, "r1", events)
    if evidence == "state_file":
        (run_dir / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')

    with pytest.raises(ConfigError) as caught:
        check_something_to_resume(run_dir)

    assert "r1 has nothing to resume from" in str(caught.value)
    assert "convdeck resume r1 --from-scratch" in str(caught.value)


def test_set_aside_for_scratch_keeps_every_file(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-4.index").write_bytes(b"x")
    first = set_aside_for_scratch(tmp_path)
    (tmp_path / "checkpoints" / "ckpt-8.index").write_bytes(b"y")
    second = set_aside_for_scratch(tmp_path)

    assert first == tmp_path / "checkpoints.before-scratch"
    assert second == tmp_path / "checkpoints.before-scratch.2"
    assert (first / "ckpt-4.index").read_bytes() == b"x" and (second / "ckpt-8.index").read_bytes() == b"y"
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert set_aside_for_scratch(tmp_path) is None  # nothing to set aside
