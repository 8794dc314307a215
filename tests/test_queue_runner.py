"""The queue runner end to end, with the TF-free fake worker: entries run one at a time on a
CPU, a failure never stops the queue, and kill -9 of the runner loses no entry and starts none twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import event_dicts, run_cli, wait_for

from engine.run.queue import ENDED, RunQueue
from engine.run.queue_runner import runner_pid, start_runner
from engine.run.store import read_config


def all_ended(home) -> bool:
    return all(e.state == ENDED for e in RunQueue(home).entries())


def starts_of(home, run_id: str) -> int:
    return sum(e["type"] == "run_started" for e in event_dicts(home / "runs" / run_id / "events.jsonl"))


@pytest.fixture
def stop_runner(convdeck_home):
    yield
    pid = runner_pid(convdeck_home)
    if pid and pid > 0:
        os.kill(pid, signal.SIGKILL)


def test_entries_run_in_order_and_a_failure_does_not_stop_the_queue(convdeck_home, fake_worker, stop_runner):
    queue = RunQueue(convdeck_home)
    first = queue.add("lenet5-digits")
    broken = queue.add("lenet5-digits", ["data.image_size=[8, 8]"])  # refused before it starts
    asked = queue.add("lenet5-digits", ["train.on_oom=\"ask\""])
    start_runner(convdeck_home)
    assert wait_for(lambda: all_ended(convdeck_home), timeout=90)
    entries = {e.id: e for e in RunQueue(convdeck_home).entries()}
    assert entries[first.id].outcome == "finished" and entries[asked.id].outcome == "finished"
    assert entries[broken.id].outcome == "failed" and "image" in entries[broken.id].note
    # ask in a queue: nobody answers, so the run's own policy is the unattended remedy, and the queue says so
    assert read_config(convdeck_home / "runs" / entries[asked.id].run_id).train.on_oom == "halve-batch"
    assert "on_oom ask" in entries[asked.id].note
    starts = [entries[i].claimed for i in (first.id, asked.id)]
    assert starts == sorted(starts)


def test_queue_cli_lists_moves_and_refuses(convdeck_home, stop_runner):
    queue = RunQueue(convdeck_home)
    queue.set_paused(True)  # nothing starts while the CLI is tried
    ids = [run_cli("queue", "add", "lenet5-digits", "--set", f"train.epochs={n}").stdout.strip() for n in (1, 2, 3)]
    listing = run_cli("queue").stdout
    assert "train.epochs=3" in listing and listing.count("lenet5-digits") == 3
    assert run_cli("queue", "move", ids[2], "1").returncode == 0
    assert [str(e.id) for e in RunQueue(convdeck_home).entries()][0] == ids[2]
    assert run_cli("queue", "rm", ids[0]).returncode == 0
    bad = run_cli("queue", "add", "nosuch")
    assert bad.returncode == 2 and "unknown preset" in bad.stderr


@pytest.mark.slow
def test_kill_9_of_the_runner_at_any_moment_loses_no_entry_and_starts_none_twice(convdeck_home, fake_worker):
    fake_worker("complete")
    queue = RunQueue(convdeck_home)
    entries = [queue.add("lenet5-digits", [f"train.epochs={1 + n % 3}"]) for n in range(8)]
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    while not all_ended(convdeck_home) and time.monotonic() < deadline:
        runner = subprocess.Popen(
            [sys.executable, "-m", "engine.run.queue_runner", "--home", str(convdeck_home), "--idle-exit", "5"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 1.5))
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        kills += 1
    assert all_ended(convdeck_home), f"not all ended after {kills} kills"
    final = {e.id: e for e in RunQueue(convdeck_home).entries()}
    run_dirs = sorted(p.name for p in (convdeck_home / "runs").iterdir())
    assert sorted(e.run_id for e in final.values()) == run_dirs  # one run per entry, none lost
    for entry in entries:
        assert final[entry.id].outcome == "finished"
        assert starts_of(convdeck_home, final[entry.id].run_id) == 1  # started once, never twice
    print(f"kill -9 cycles survived: {kills}")
    assert kills >= 3
