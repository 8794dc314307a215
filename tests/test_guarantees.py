"""The guarantees of issue 3, each through real worker processes training LeNet-5 on the digits.

- kill -9 the worker mid-run: ``runs`` says crashed, two ``resume``s at once
  start one worker (the other: ``already running (pid N)``, exit 2), which
  continues from the last checkpoint with the step counter continuing, and finishes;
- kill the viewer (a terminal hang-up, SIGKILL): the worker trains on and finishes;
- several viewers attached at once each see every event, in order;
- pause then resume loses no step;
- ``ctl stop`` leaves a checkpoint that ``resume`` accepts;
- bad input: one line, exit 2 where it is the user's mistake, nothing on disk changed.

Every wait polls events.jsonl (or the process) against a deadline; the only
sleep is the one that checks nothing happens while a run is paused.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import (
    cli_command,
    dead_pid,
    event_dicts,
    make_run,
    one_line_error,
    run_cli,
    start_cli,
    started,
    step,
)

from engine.run import protocol
from engine.run.client import RunHandle

# Small and quick: 1,437 digits at batch 32 are 44 steps an epoch. A checkpoint
# every 20 steps lands inside epochs (20, 40, 60, 80...) as well as at their ends.
STEPS_PER_EPOCH = 44
CHECKPOINT_EVERY = 20


def small(epochs: int) -> tuple[str, ...]:
    return (
        "--set", f"train.epochs={epochs}",
        "--set", "data.image_size=[28, 28]",
        "--set", f"train.checkpoint_every={CHECKPOINT_EVERY}",
        "--set", "train.on_nan=stop",  # a NaN would pause and wait for a person
    )  # fmt: skip


# Generous: other suites may load the two cores while TensorFlow starts.
DEADLINE = 300.0
SLOW_TIMEOUT = 900


# -- helpers ---------------------------------------------------------------------------


def events_of(run_dir: Path) -> list[dict]:
    return event_dicts(run_dir / "events.jsonl")


def steps_of(events: list[dict]) -> list[int]:
    """Every step number, in file order (a line may batch several steps as a list)."""
    numbers: list[int] = []
    for event in events:
        if event["type"] == "step":
            value = event["step"]
            numbers.extend(value if isinstance(value, list) else [value])
    return numbers


def last_step(events: list[dict]) -> int:
    return max(steps_of(events), default=0)


def segments(events: list[dict]) -> list[list[dict]]:
    """The events of each worker: a segment starts at each ``building`` (a worker's first
    event), or at a ``run_started`` that no ``building`` announced."""
    parts: list[list[dict]] = []
    for event in events:
        announced = bool(parts) and parts[-1][-1]["type"] == "building"
        if event["type"] == "building" or (event["type"] == "run_started" and not announced) or not parts:
            parts.append([])
        parts[-1].append(event)
    return parts


def first_of(events: list[dict], kind: str) -> dict:
    """The first event of a type (a worker's ``building`` comes before its ``run_started``)."""
    return next(event for event in events if event["type"] == kind)


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        return "\n".join((run_dir / "worker.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no worker.log)"


def wait_events(
    run_dir: Path, predicate: Callable[[list[dict]], bool], what: str, timeout: float = DEADLINE
) -> list[dict]:
    """Poll events.jsonl until ``predicate(events)``; fail fast on a ``failed`` event."""
    deadline = time.monotonic() + timeout
    while True:
        events = events_of(run_dir)
        if predicate(events):
            return events
        failed = [e for e in events if e["type"] == "failed"]
        if failed:
            raise AssertionError(f"the run failed waiting for {what}: {failed[-1]}")
        if time.monotonic() > deadline:
            kinds = [e["type"] for e in events if e["type"] != "step"]
            raise AssertionError(
                f"no {what} within {timeout:g} s; last step {last_step(events)}, events {kinds}\n"
                f"worker.log:\n{log_tail(run_dir)}"
            )
        time.sleep(0.1)


def finished(events: list[dict]) -> bool:
    return bool(events) and events[-1]["type"] == "finished"


def worker_pid(run_dir: Path) -> int:
    return int((run_dir / "worker.pid").read_text().split()[0])


def wait_gone(pid: int, timeout: float = 60.0) -> None:
    """Wait until ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs after {timeout:g} s")


def supervisor_of(pid: int) -> int | None:
    """The worker's supervisor (engine.run.supervisor), which reports how the worker died."""
    try:
        parent = psutil.Process(pid).parent()
        if parent is not None and "engine.run.supervisor" in " ".join(parent.cmdline()):
            return parent.pid
    except psutil.Error:
        pass
    return None


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def checkpoint_on_disk(run_dir: Path) -> int | None:
    """The step of the latest checkpoint, as TensorFlow's index file names it."""
    try:
        text = (run_dir / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return None
    found = re.search(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', text, re.M)
    return int(found.group(1)) if found else None


def start_detached(*args: str) -> tuple[str, Path]:
    result = run_cli("run", "lenet5-digits", "--detach", *args)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1].split()[-1]
    home = Path(os.environ["CONVDECK_HOME"])
    return run_id, home / "runs" / run_id


def status_of(run_id: str) -> str:
    result = run_cli("runs", "--json")
    assert result.returncode == 0, result.stderr
    return next(r["status"] for r in json.loads(result.stdout) if r["run_id"] == run_id)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_trained_to_the_end(events: list[dict], epochs: int) -> None:
    """Every step exactly once and in order, every epoch ended once, and the run completed."""
    total = epochs * STEPS_PER_EPOCH
    last = segments(events)[-1]
    assert last[-1]["type"] == "finished" and last[-1]["reason"] == "completed", last[-1]
    assert last[-1]["steps"] == total
    run_started = first_of(last, "run_started")
    assert run_started["total_steps"] == total and run_started["steps_per_epoch"] == STEPS_PER_EPOCH


def assert_steps_consecutive(numbers: list[int], first: int, last: int) -> None:
    expected = list(range(first, last + 1))
    if numbers != expected:
        gaps = sorted(set(expected) - set(numbers))[:10]
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})[:10]
        raise AssertionError(
            f"steps {first}..{last} not each once in order: missing {gaps}, repeated {dupes}"
        )


# -- kill -9 the worker ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_kill_9_mid_run_shows_crashed_and_resume_continues_the_step_counter(convdeck_home):
    epochs = 4
    run_id, run_dir = start_detached(*small(epochs))
    before_kill = wait_events(
        run_dir,
        lambda ev: (
            any(e["type"] == "checkpoint" and e["step"] > 0 for e in ev)
            and last_step(ev) > CHECKPOINT_EVERY + 4
        ),
        "a checkpoint and a few steps after it",
    )
    pid = worker_pid(run_dir)
    supervisor = supervisor_of(pid)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    if supervisor is not None:
        wait_gone(supervisor)  # it appends worker_exit, then ends

    killed = events_of(run_dir)
    kill_step = last_step(killed)
    assert not any(e["type"] in ("finished", "failed") for e in killed)
    exits = [e for e in killed if e["type"] == "worker_exit"]
    assert [e.get("signal") for e in exits] == (["SIGKILL"] if supervisor else []), exits
    assert kill_step < epochs * STEPS_PER_EPOCH, "the run ended before it was killed"
    assert status_of(run_id) == "crashed"
    shown = json.loads(run_cli("show", run_id, "--json").stdout)
    assert shown["summary"]["status"] == "crashed"

    saved = checkpoint_on_disk(run_dir)
    announced = max(e["step"] for e in killed if e["type"] == "checkpoint")
    # The worker announces a checkpoint after saving it: the disk may be one save ahead.
    assert saved is not None and announced <= saved <= kill_step, (announced, saved, kill_step)
    # A checkpoint every CHECKPOINT_EVERY steps (and at epoch ends): at most that many redone.
    assert kill_step - saved <= CHECKPOINT_EVERY, (kill_step, saved)
    assert last_step(before_kill) <= kill_step
    events_bytes = (run_dir / "events.jsonl").read_bytes()

    # Two resumes at once, as a person and a script might: one worker, the other refused.
    racers = [start_cli("resume", run_id, "--detach") for _ in range(2)]
    outcomes = [(racer.wait(DEADLINE), *racer.communicate()) for racer in racers]
    assert sorted(code for code, _, _ in outcomes) == [0, 2], outcomes
    owner = worker_pid(run_dir)
    (refused,) = [stderr for code, _, stderr in outcomes if code == 2]
    assert f"already running (pid {owner})" in refused and len(refused.strip().splitlines()) == 1

    events = wait_events(run_dir, finished, "the resumed run's end")
    assert (run_dir / "events.jsonl").read_bytes().startswith(events_bytes), "history was lost"
    assert [e["type"] for e in events].count("run_started") == 2
    assert_trained_to_the_end(events, epochs)
    resumed = segments(events)[-1]
    started_again = first_of(resumed, "run_started")
    assert started_again["resumed_from_step"] == saved and started_again["pid"] == owner
    assert steps_of(resumed)[0] == saved + 1, "the step counter did not continue"
    assert_steps_consecutive(steps_of(resumed), saved + 1, epochs * STEPS_PER_EPOCH)
    # Each epoch ends once after the resume, from the one the checkpoint was in.
    first_epoch = saved // STEPS_PER_EPOCH + 1
    assert [e["epoch"] for e in resumed if e["type"] == "epoch_end"] == list(
        range(first_epoch, epochs + 1)
    )
    assert status_of(run_id) == "finished"


# -- kill the viewer -----------------------------------------------------------------------


class TerminalViewer:
    """``convdeck ARGS`` on a pseudo-terminal of its own, as over ssh: its own session,
    the terminal its controlling one, so closing the terminal hangs it up."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()

        def take_terminal() -> None:  # runs in the child after setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            [*cli_command(), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
        )
        os.close(slave)
        self.output = bytearray()
        self._reading = True
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while self._reading:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not chunk:
                return
            self.output += chunk

    def hang_up(self) -> None:
        """Close the terminal: the kernel sends SIGHUP to the session, as a dropped link does."""
        self._reading = False
        self._reader.join(5)
        os.close(self.master)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.hang_up()


@pytest.mark.parametrize("how", ["hangup", "sigkill"])
def test_the_worker_trains_on_when_its_viewer_dies(convdeck_home, how):
    epochs = 4
    viewer = TerminalViewer("run", "lenet5-digits", *small(epochs))
    home_runs = convdeck_home / "runs"
    try:
        deadline = time.monotonic() + DEADLINE
        while not (home_runs.exists() and any(home_runs.iterdir())):
            assert viewer.process.poll() is None, bytes(viewer.output).decode(errors="replace")
            assert time.monotonic() < deadline, "no run directory appeared"
            time.sleep(0.05)
        (run_dir,) = home_runs.iterdir()
        wait_events(run_dir, lambda ev: last_step(ev) >= 5, "a few steps")
        worker = worker_pid(run_dir)
        assert os.getsid(worker) != os.getsid(viewer.process.pid)
        if how == "hangup":
            viewer.hang_up()
            expected = -signal.SIGHUP
        else:
            viewer.kill()
            expected = -signal.SIGKILL
        assert viewer.process.wait(30) == expected, bytes(viewer.output).decode(errors="replace")
    finally:
        if viewer.process.poll() is None:
            viewer.kill()
    at_viewer_death = last_step(events_of(run_dir))
    assert is_running(worker), f"the worker died with its viewer:\n{log_tail(run_dir)}"
    assert at_viewer_death < epochs * STEPS_PER_EPOCH

    events = wait_events(run_dir, finished, "the end of the run")
    assert_trained_to_the_end(events, epochs)
    assert_steps_consecutive(steps_of(events), 1, epochs * STEPS_PER_EPOCH)
    wait_gone(worker)
    assert status_of(run_dir.name) == "finished"


# -- viewers attached at once ----------------------------------------------------------------


async def test_viewers_attached_at_once_each_see_every_event_in_order(convdeck_home):
    epochs = 3
    # Viewer A started the run and follows it (`convdeck run --json`).
    viewer_a = start_cli("run", "lenet5-digits", "--json", *small(epochs))
    reading_a = asyncio.create_task(asyncio.to_thread(viewer_a.communicate, timeout=DEADLINE))
    try:
        home_runs = convdeck_home / "runs"

        def has_started() -> bool:
            return home_runs.exists() and any(
                (d / "events.jsonl").exists() and events_of(d) for d in home_runs.iterdir()
            )

        deadline = time.monotonic() + DEADLINE
        while not has_started():
            assert viewer_a.poll() is None and time.monotonic() < deadline, "the run never started"
            await asyncio.sleep(0.05)
        (run_dir,) = home_runs.iterdir()

        async def view(after_step: int = 0) -> list[dict]:
            if after_step:
                await asyncio.to_thread(
                    wait_events, run_dir, lambda ev: last_step(ev) >= after_step, "steps"
                )
            seen: list[dict] = []
            async for batch in RunHandle(run_dir).events(until_done=True, poll_interval=0.05):
                seen.extend(batch)
            return seen

        # Viewer B attaches at the start, viewer C mid-run (history, then live).
        seen_b, seen_c = await asyncio.wait_for(
            asyncio.gather(view(), view(after_step=30)), DEADLINE
        )
        out_a, err_a = await reading_a
    finally:
        if viewer_a.poll() is None:
            viewer_a.kill()
    assert viewer_a.returncode == 0, err_a

    truth = events_of(run_dir)
    assert_trained_to_the_end(truth, epochs)
    assert_steps_consecutive(steps_of(truth), 1, epochs * STEPS_PER_EPOCH)
    # Each as plain data with every declared field, as events_of gives the truth.
    for name, seen in (
        ("A (convdeck run --json)", [protocol.from_dict(line) for line in json_lines(out_a)]),
        ("B", seen_b),
        ("C", seen_c),
    ):
        seen = [protocol.to_dict(event, defaults=True) for event in seen]
        assert_steps_consecutive(steps_of(seen), 1, epochs * STEPS_PER_EPOCH)
        assert seen == truth, f"viewer {name} saw other events than events.jsonl holds"


# -- pause, resume ------------------------------------------------------------------------------


def test_pause_then_resume_loses_no_step(convdeck_home):
    epochs = 4
    run_id, run_dir = start_detached(*small(epochs))
    wait_events(run_dir, lambda ev: last_step(ev) >= 10, "ten steps")
    result = run_cli("ctl", run_id, "pause")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True

    paused_events = wait_events(
        run_dir, lambda ev: any(e["type"] == "paused" for e in ev), "the paused event"
    )
    paused = next(e for e in paused_events if e["type"] == "paused")
    assert last_step(paused_events) == paused["step"]
    assert status_of(run_id) == "paused"
    reply = json.loads(run_cli("ctl", run_id, "status").stdout)
    assert reply["ok"] and reply["paused"] is True and reply["state"] == "paused"
    assert reply["step"] == paused["step"]
    # The one sleep: nothing to await, the check is that nothing happens.
    time.sleep(1.5)
    assert last_step(events_of(run_dir)) == paused["step"], "it trained while paused"

    result = run_cli("ctl", run_id, "resume")
    assert result.returncode == 0, result.stderr
    events = wait_events(run_dir, finished, "the end of the run")
    assert_trained_to_the_end(events, epochs)
    assert len(segments(events)) == 1, "pausing must not restart the worker"
    assert_steps_consecutive(steps_of(events), 1, epochs * STEPS_PER_EPOCH)
    kinds = [e["type"] for e in events]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1
    resumed_at = kinds.index("resumed")
    assert kinds.index("paused") < resumed_at
    assert events[resumed_at]["step"] == paused["step"]
    assert steps_of(events[resumed_at:])[0] == paused["step"] + 1
    assert status_of(run_id) == "finished"


# -- stop, then resume -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(SLOW_TIMEOUT)
def test_ctl_stop_leaves_a_checkpoint_that_resume_accepts(convdeck_home):
    epochs = 4
    run_id, run_dir = start_detached(*small(epochs))
    wait_events(run_dir, lambda ev: last_step(ev) > CHECKPOINT_EVERY + 4, "steps past a checkpoint")
    pid = worker_pid(run_dir)
    result = run_cli("ctl", run_id, "stop")
    assert result.returncode == 0, result.stderr

    stopped = wait_events(run_dir, finished, "the stop")
    wait_gone(pid)
    end = stopped[-1]
    assert end["reason"] == "stopped"
    stop_step = end["steps"]
    assert stop_step == last_step(stopped) < epochs * STEPS_PER_EPOCH
    checkpoints = [e for e in stopped if e["type"] == "checkpoint"]
    assert checkpoints[-1]["step"] == stop_step, "stop did not checkpoint its last step"
    assert checkpoint_on_disk(run_dir) == stop_step
    assert status_of(run_id) == "stopped"

    result = run_cli("resume", run_id, "--json", timeout=DEADLINE)
    assert result.returncode == 0, result.stderr + log_tail(run_dir)
    followed = json_lines(result.stdout)
    assert first_of(followed, "run_started")["resumed_from_step"] == stop_step
    events = events_of(run_dir)
    assert_trained_to_the_end(events, epochs)
    assert_steps_consecutive(steps_of(events), 1, epochs * STEPS_PER_EPOCH)
    assert status_of(run_id) == "finished"


# -- bad input: one line, exit 2, nothing on disk changed ---------------------------------------

FINISHED = {"type": "finished", "reason": "completed", "steps": 2, "val_accuracy": 0.9}


def snapshot(home: Path) -> dict[str, tuple]:
    """Every file and directory under ``home``: bytes, mode and mtime."""
    state: dict[str, tuple] = {}
    for path in sorted(home.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(home))] = (content, info.st_mode, info.st_mtime_ns)
    return state


@pytest.fixture
def bad_runs(convdeck_home: Path) -> Path:
    """Two finished runs sharing a prefix, a crashed run whose config.toml is binary
    garbage, one whose config is not TOML, and one whose events hold garbage lines."""
    make_run(convdeck_home, "20250101-000000-lenet5-digits-aaaa", [started(), step(1), FINISHED])
    make_run(convdeck_home, "20250101-000000-lenet5-digits-aaab", [started(), step(1), FINISHED])
    binary = make_run(
        convdeck_home, "20250102-000000-bin-bbbb", [started(), step(1)], pid=dead_pid()
    )
    (binary / "config.toml").write_bytes(b"\xff\xfe\x00garbage\x80\x81 = [\n")
    text = make_run(convdeck_home, "20250103-000000-txt-cccc", [started(), step(1)], pid=dead_pid())
    (text / "config.toml").write_text("[model]\narch = = 'lenet5'\n")
    garbled = make_run(convdeck_home, "20250104-000000-garbled-dddd", [], pid=dead_pid())
    (garbled / "events.jsonl").write_bytes(
        json.dumps(
            {"type": "run_started", "time": 1.0, "config": {"name": "lenet5-digits"}}
        ).encode()
        + b'\n\xff\xfe\x80 binary junk\n[1, 2, 3]\n{"no_type": 1}\n'
        + json.dumps({"type": "step", "time": 2.0, "step": 7, "epoch": 1, "loss": 0.25}).encode()
        + b'\n{"type": "step", "time": 3.0, "st'
    )
    return convdeck_home


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["resume", "zzz"], "no run matches 'zzz'"),
        (["resume", "20250101"], "matches 2 runs"),
        (["ctl", "20250101", "status"], "matches 2 runs"),
        (["attach", "20250101"], "matches 2 runs"),
        (["show", "2025"], "matches 5 runs"),
        (["ctl", "20250101-000000-lenet5-digits-aaaa", "pause"], "is finished: no worker"),
        (["ctl", "20250101-000000-lenet5-digits-aaab", "stop"], "is finished: no worker"),
        (["resume", "20250101-000000-lenet5-digits-aaaa"], "finished; nothing to resume"),
        (["resume", "20250102"], "config.toml: not a text file"),
        (["show", "20250102"], "config.toml: not a text file"),
        (["resume", "20250103"], "config.toml: malformed TOML"),
        (["ctl", "20250103", "resume"], "is crashed: no worker"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad_runs, args, expected):
    before = snapshot(bad_runs)
    error = one_line_error(run_cli(*args))
    assert expected in error, error
    assert snapshot(bad_runs) == before, "a refused command changed the run store"


def test_a_run_with_unreadable_config_or_garbled_events_is_still_listed(bad_runs):
    before = snapshot(bad_runs)
    result = run_cli("runs", "--json")
    assert result.returncode == 0 and not result.stderr, result.stderr
    runs = {r["run_id"][-4:]: r for r in json.loads(result.stdout)}
    assert {k: r["status"] for k, r in runs.items()} == {
        "aaaa": "finished",
        "aaab": "finished",
        "bbbb": "crashed",
        "cccc": "crashed",
        "dddd": "crashed",
    }
    assert runs["dddd"]["step"] == 7 and runs["dddd"]["last_loss"] == 0.25
    table = run_cli("runs")
    assert table.returncode == 0 and "Traceback" not in table.stderr
    assert snapshot(bad_runs) == before


def test_show_of_garbled_events_skips_the_bad_lines_and_says_how_many(bad_runs):
    before = snapshot(bad_runs)
    result = run_cli("show", "20250104", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["metrics"]["last_step"]["step"] == 7
    # binary junk, a JSON array, an object without "type", and the torn last line
    assert shown["metrics"]["unreadable_lines"] == 4
    text = run_cli("show", "20250104").stdout
    assert len([line for line in text.splitlines() if "torn, garbage" in line]) == 1
    assert snapshot(bad_runs) == before


async def test_a_viewer_skips_garbage_lines_and_keeps_following(bad_runs):
    run_dir = bad_runs / "runs" / "20250104-000000-garbled-dddd"
    seen = [e async for batch in RunHandle(run_dir).events(until_done=True) for e in batch]
    assert [e.type for e in seen] == ["run_started", "step"]
