"""engine.run.client: following events, commands over the control socket, finding and starting runs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import dead_pid, epoch_end, make_run, started, step

from engine.config import ConfigError, RunConfig
from engine.run import client


def append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def line(event: dict) -> str:
    return json.dumps({"type": event["type"], "time": 1.0, **event}) + "\n"


async def next_batch(events, timeout: float = 5.0) -> list:
    return await asyncio.wait_for(anext(events), timeout)


# -- events ------------------------------------------------------------------------


async def test_events_replay_history_then_follow_appended_lines(convdeck_home):
    run_dir = make_run(
        convdeck_home, "r1", [started(), step(1), "{torn garbage\n", step(2)], pid="self"
    )
    handle = client.RunHandle(run_dir)
    events = handle.events(poll_interval=0.02)
    history = await next_batch(events)
    assert [e.type for e in history] == ["run_started", "step", "step"]

    append(run_dir / "events.jsonl", line(step(3)) + line(step(4))[:20])  # 4 is half-written
    assert [e.step for e in await next_batch(events)] == [3]
    append(run_dir / "events.jsonl", line(step(4))[20:])
    assert [e.step for e in await next_batch(events)] == [4]
    await events.aclose()


async def test_events_history_of_a_long_run_comes_in_chunks(convdeck_home, monkeypatch):
    monkeypatch.setattr(client, "HISTORY_CHUNK_BYTES", 4096)
    run_dir = make_run(convdeck_home, "r1", [started()] + [step(n) for n in range(1, 501)])
    seen, batches = [], 0
    async for batch in client.RunHandle(run_dir).events(until_done=True):
        seen += [e.step for e in batch if e.type == "step"]
        batches += 1
    assert seen == list(range(1, 501))
    assert batches > 5


async def test_events_history_steps_thins_a_long_history_but_keeps_the_rest(convdeck_home):
    history = [started()]
    for epoch in (1, 2):
        history += [step(n, epoch) for n in range(epoch * 1000 - 999, epoch * 1000 + 1)]
        history.append(epoch_end(epoch, 0.5 + epoch / 10))
    run_dir = make_run(convdeck_home, "r1", history + ["garbage\n"], pid="self")
    events = client.RunHandle(run_dir).events(history_steps=100, poll_interval=0.02)
    replayed = await next_batch(events)
    steps = [e.step for e in replayed if e.type == "step"]
    assert 80 <= len(steps) <= 130 and steps == sorted(steps)
    kinds = [e.type for e in replayed]
    assert kinds[0] == "run_started" and kinds.count("epoch_end") == 2
    assert replayed[kinds.index("epoch_end") - 1].step == 1000  # the step before it
    assert steps[-1] == 2000

    append(run_dir / "events.jsonl", "".join(line(step(n, 3)) for n in (2001, 2002, 2003)))
    assert [e.step for e in await next_batch(events)] == [2001, 2002, 2003]  # never thinned
    await events.aclose()


async def test_events_from_end_skips_history(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", [started(), step(1)], pid="self")
    events = client.RunHandle(run_dir).events(from_start=False, poll_interval=0.02)
    waiting = asyncio.ensure_future(next_batch(events))
    await asyncio.sleep(0.1)
    append(run_dir / "events.jsonl", line(step(2)))
    assert [e.step for e in await waiting] == [2]
    await events.aclose()


async def test_events_until_done_ends_at_the_final_event(convdeck_home):
    finished = {"type": "finished", "reason": "completed"}
    run_dir = make_run(convdeck_home, "r1", [started(), step(1), finished], pid="self")
    batches = [b async for b in client.RunHandle(run_dir).events(until_done=True)]
    assert batches[-1][-1].type == "finished"


async def test_events_until_done_ends_when_the_worker_is_dead(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", [started(), step(1), '{"type": "st'], pid=dead_pid())
    batches = [b async for b in client.RunHandle(run_dir).events(until_done=True)]
    assert [e.type for batch in batches for e in batch] == ["run_started", "step"]


async def test_events_until_done_keeps_following_a_resumed_run(convdeck_home):
    stopped = {"type": "finished", "reason": "stopped"}
    run_dir = make_run(convdeck_home, "r1", [started(), step(1), stopped, started(1)], pid="self")
    events = client.RunHandle(run_dir).events(until_done=True, poll_interval=0.02)
    await next_batch(events)
    append(run_dir / "events.jsonl", line(step(2)))
    assert [e.step for e in await next_batch(events)] == [2]
    await events.aclose()


async def test_events_of_a_run_without_events_file_wait_for_it(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", pid="self")
    (run_dir / "events.jsonl").unlink()
    events = client.RunHandle(run_dir).events(poll_interval=0.02)
    waiting = asyncio.ensure_future(next_batch(events))
    await asyncio.sleep(0.1)
    append(run_dir / "events.jsonl", line(started()))
    assert (await waiting)[0].type == "run_started"
    await events.aclose()


# -- commands ------------------------------------------------------------------------


async def test_command_gets_the_workers_reply(convdeck_home, control_server):
    run_dir = make_run(convdeck_home, "r1", pid="self")
    server = control_server(run_dir, lambda r: {"ok": True, "state": "running", **r})
    handle = client.RunHandle(run_dir)
    assert (await handle.command("status"))["state"] == "running"
    reply = await handle.command("remedy", name="halve-batch")
    assert reply == {"ok": True, "state": "running", "command": "remedy", "name": "halve-batch"}
    assert server.requests[-1] == {"command": "remedy", "name": "halve-batch"}


def test_command_sync_gets_the_workers_reply(convdeck_home, control_server):
    run_dir = make_run(convdeck_home, "r1", pid="self")
    control_server(run_dir, lambda r: {"ok": False, "error": "cannot pause while waiting"})
    reply = client.RunHandle(run_dir).command_sync("pause")
    assert reply == {"ok": False, "error": "cannot pause while waiting"}


async def test_command_to_a_dead_worker_says_so_quickly(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", pid=dead_pid())
    handle = client.RunHandle(run_dir)
    began = time.monotonic()
    reply = await handle.command("status")
    assert reply["ok"] is False and reply["unreachable"] is True
    assert "no control socket" in reply["error"]
    assert handle.command_sync("stop")["ok"] is False
    assert time.monotonic() - began < 1.0


async def test_command_to_a_stale_socket_is_refused_quickly(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", pid=dead_pid())
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    stale.bind(f"/proc/self/fd/{fd}/control.sock")
    os.close(fd)
    stale.close()  # the file stays, nobody listens: a worker killed with -9
    began = time.monotonic()
    reply = await client.RunHandle(run_dir).command("status")
    assert reply["ok"] is False and "exited" in reply["error"]
    assert time.monotonic() - began < 1.0


async def test_command_times_out_without_raising(convdeck_home, control_server):
    run_dir = make_run(convdeck_home, "r1", pid="self")
    control_server(run_dir, silent=True)
    handle = client.RunHandle(run_dir)
    began = time.monotonic()
    reply = await handle.command("status", timeout=0.3)
    assert reply["ok"] is False and "0.3 s" in reply["error"]
    assert handle.command_sync("status", timeout=0.3)["ok"] is False
    assert time.monotonic() - began < 2.0


async def test_command_reaches_a_socket_deeper_than_sockaddr_un_allows(tmp_path, control_server):
    run_dir = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    run_dir.mkdir(parents=True)
    assert len(str(run_dir / "control.sock")) > 108
    control_server(run_dir)
    handle = client.RunHandle(run_dir)
    assert (await handle.command("status"))["ok"] is True
    assert handle.command_sync("status")["ok"] is True


# -- finding, listing, resuming --------------------------------------------------------


def test_find_run_by_prefix_and_newest_live(convdeck_home):
    make_run(convdeck_home, "20250101-000000-a-0001", [started()], pid="self")
    make_run(convdeck_home, "20250102-000000-b-0002", [started()], pid=dead_pid())
    assert client.find_run("20250102").run_id == "20250102-000000-b-0002"
    assert client.find_run(None).run_id == "20250101-000000-a-0001"
    with pytest.raises(ConfigError, match="matches 2 runs"):
        client.find_run("2025")
    with pytest.raises(ConfigError, match="no run matches 'zzz'"):
        client.find_run("zzz")


def test_find_run_without_a_live_run_says_so(convdeck_home):
    make_run(convdeck_home, "r1", [started()], pid=dead_pid())
    with pytest.raises(ConfigError, match="no live run"):
        client.find_run(None)


def test_list_runs_names_the_preset_before_the_worker_started(convdeck_home):
    make_run(convdeck_home, "r1", pid="self")
    (summary,) = client.list_runs()
    assert summary.preset == "lenet5-digits" and summary.status == "running"


@pytest.mark.parametrize(
    ("events", "pid", "message"),
    [
        ([started(), {"type": "finished", "reason": "completed"}], None, "finished; nothing"),
        ([started()], "self", r"already running \(pid \d+\)"),
    ],
)
def test_resume_refuses_finished_and_live_runs(convdeck_home, events, pid, message):
    make_run(convdeck_home, "r1", events, pid=pid)
    with pytest.raises(ConfigError, match=message):
        client.resume_run_sync("r1")


def test_resume_refuses_an_unknown_remedy(convdeck_home):
    make_run(convdeck_home, "r1", [started()], pid=dead_pid())
    with pytest.raises(ConfigError, match="got 'halve', which is now called 'halve-batch'"):
        client.resume_run_sync("r1", remedy="halve")


def test_show_figures_fold_best_last_and_final(convdeck_home):
    events = [
        started(),
        step(1),
        epoch_end(1, 0.9),
        step(2, 2),
        epoch_end(2, 0.85),
        {"type": "checkpoint", "step": 2, "path": "ckpt-2"},
        {"type": "finished", "reason": "stopped", "loss": 0.3, "steps": 2},
        {"type": "remedy_applied", "name": "halve-batch"},
        started(2),
    ]
    facts = client.RunHandle(make_run(convdeck_home, "r1", events)).summary()
    metrics = facts.metrics_json()
    assert metrics["best"] == {"val_accuracy": 0.9, "epoch": 1}
    assert metrics["last_epoch"]["val_accuracy"] == 0.85
    assert metrics["last_step"]["step"] == 2
    assert metrics["checkpoint"] == {"step": 2, "path": "ckpt-2"}
    assert metrics["final"] is None  # the stop is over: a worker took the run up again
    assert metrics["resumes"] == 1 and metrics["remedies"] == ["halve-batch"]


async def test_events_count_the_lines_they_skip(convdeck_home):
    bad = ['{"type": "failed", "time": 1, "error": 5}\n', "garbage\n"]
    run_dir = make_run(convdeck_home, "r1", [started(), *bad, step(1)], pid=dead_pid())
    handle = client.RunHandle(run_dir)
    seen = [e.type async for batch in handle.events(until_done=True) for e in batch]
    assert seen == ["run_started", "step"]
    assert handle.unreadable_lines == 2


# -- starting a worker ------------------------------------------------------------------


async def test_start_run_spawns_a_detached_worker_and_follows_it(convdeck_home, fake_worker):
    handle = await client.start_run(RunConfig(name="fake"))
    assert (handle.run_dir / "worker.pid").read_text().split()[0] == str(handle.process.pid)
    assert os.getsid(handle.process.pid) == handle.process.pid  # a session of its own
    types = [e.type async for batch in handle.events(until_done=True) for e in batch]
    assert types[0] == "run_started" and types[-1] == "finished"
    assert handle.wait_exit(10) and handle.exit_code() == 0
    assert handle.summary().status == "finished"


async def test_resume_spawns_with_resume_and_follows_only_new_events(convdeck_home, fake_worker):
    run_dir = make_run(convdeck_home, "r1", [started(), step(1), step(2)], pid=dead_pid())
    handle = client.resume_run_sync("r1", remedy="halve-batch")
    assert handle.wait_exit(10) and handle.exit_code() == 0
    assert handle.spawn_offset > 0
    follow = [e async for e in _flat(handle.events(offset=handle.spawn_offset, until_done=True))]
    assert follow[0].type == "run_started" and follow[0].resumed_from_step == 2
    assert follow[1].step == 3
    assert "--resume" in handle.process.args and "halve-batch" in handle.process.args
    assert (run_dir / "worker.log").exists()


async def _flat(batches):
    async for batch in batches:
        for event in batch:
            yield event


def test_client_imports_neither_tensorflow_nor_textual():
    code = (
        "import sys, engine.run.client, tui.cli, tui.progress; "
        "assert not {'tensorflow', 'textual'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
