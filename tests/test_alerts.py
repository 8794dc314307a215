"""Alerts end to end: the supervisor posts to a local Apprise json:// catcher as a run finishes,
crashes by SIGKILL, stalls or waits on an OOM (TF-free fake worker, the real supervisor)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import run_cli, wait_for
from test_notify import Catcher

from engine.run.alerts import alert_body
from engine.run.facts import RunFacts
from engine.run.protocol import EpochEnd, Failed, RunStarted


@pytest.fixture
def catcher():
    server = Catcher()
    yield server
    server.close()


def start(catcher: Catcher, *extra: str) -> str:
    done = run_cli("run", "--detach", "--notify", catcher.url, *extra)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert len(done.stdout.splitlines()) == 1 and " " not in run_id  # --detach: the id alone on stdout
    assert f"convdeck attach {run_id}" in done.stderr
    return run_id


def titles(catcher: Catcher) -> list[str]:
    return [post["title"] for post in catcher.posts]


def test_a_finished_run_alerts_with_its_numbers(convdeck_home, fake_worker, catcher):
    run_id = start(catcher)
    assert wait_for(lambda: any("finished" in t for t in titles(catcher)), timeout=30)
    post = next(p for p in catcher.posts if "finished" in p["title"])
    assert run_id in post["title"] and post["type"] == "success"
    body = post["message"]
    assert "val_accuracy 0.8950" in body and "best 0.8950" in body and f"convdeck attach {run_id}" in body
    assert "step 6/6" in body


def test_a_worker_killed_by_sigkill_is_reported_crashed_by_its_supervisor(convdeck_home, fake_worker, catcher):
    fake_worker("serve")
    run_id = start(catcher)
    pid_file = convdeck_home / "runs" / run_id / "worker.pid"
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=30)
    time.sleep(0.5)
    killed = time.monotonic()
    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    assert wait_for(lambda: any("crashed" in t for t in titles(catcher)), timeout=30)
    latency = time.monotonic() - killed
    post = next(p for p in catcher.posts if "crashed" in p["title"])
    assert post["type"] == "failure" and "SIGKILL" in post["message"]
    print(f"crash alert latency {latency:.2f} s")
    assert latency < 15, latency  # the supervisor sees the death at once; sending takes the rest


def test_a_stalled_run_alerts_then_finishes(convdeck_home, fake_worker, catcher, monkeypatch):
    fake_worker("stall")
    monkeypatch.setenv("FAKE_STALL_SECONDS", "6")
    monkeypatch.setenv("CONVDECK_STALL_MIN_SECONDS", "2")
    start(catcher)
    assert wait_for(lambda: any("finished" in t for t in titles(catcher)), timeout=40)
    kinds = [t.rsplit(" ", 1)[-1] for t in titles(catcher)]
    assert kinds.index("stalled") < kinds.index("finished")
    stalled = next(p for p in catcher.posts if p["title"].endswith("stalled"))
    assert "no step for" in stalled["message"] and "ctl" in stalled["message"]


def test_an_oom_waiting_for_a_remedy_alerts(convdeck_home, fake_worker, catcher):
    fake_worker("oom_wait")
    run_id = start(catcher)
    assert wait_for(lambda: any("waiting" in t for t in titles(catcher)), timeout=30)
    post = next(p for p in catcher.posts if "waiting" in p["title"])
    assert "out of memory at step 3" in post["message"]
    assert run_cli("ctl", run_id, "stop").returncode == 0 or True  # the fake takes SIGTERM too
    os.kill(int((convdeck_home / "runs" / run_id / "worker.pid").read_text().split()[0]), signal.SIGTERM)


def test_the_body_names_the_last_error_line_and_the_remedies():
    facts = RunFacts(run_id="r1").apply(
        [
            RunStarted(time=1.0, config={"name": "p", "model": {"arch": "lenet5"}}, epochs=2, steps_per_epoch=3),
            EpochEnd(time=2.0, epoch=1, step=3, val_accuracy=0.5),
            Failed(time=3.0, error="Traceback ...\nValueError: the last line"),
        ]
    )
    facts.remedies.append("halve-batch")
    body = alert_body(facts)
    assert "error: ValueError: the last line" in body and "remedies applied: halve-batch" in body
