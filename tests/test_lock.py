"""One worker per run, guaranteed by the kernel (engine.run.lock).

- many ``resume``s at once on a crashed run: one worker starts, every other
  says ``already running (pid N)`` with exit 2, and the steps stay contiguous;
- a worker stopped by SIGSTOP still holds its run: ``hung``, not ``crashed``;
  ``resume`` refuses it, ``resume --force`` ends it and carries on;
- a worker that finds its run owned writes nothing and leaves the owner's
  control socket alone;
- the lock goes across a remedy's ``execv`` without a moment of release.

The fake worker (tests/fake_worker.py) stands in wherever TensorFlow is beside the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from conftest import dead_pid, event_dicts, make_run, one_line_error, run_cli, start_cli, started, wait_for

from engine.config import RunConfig
from engine.run import client, lock
from engine.run.control import ControlServer, SocketInUse
from engine.run.lock import EXIT_ALREADY_RUNNING, RunLock
from engine.run.store import (
    HEARTBEAT_STALE_ENV,
    LOCK_FILE,
    SOCKET_FILE,
    Liveness,
    claim_run,
    read_pid_file,
    summarize_run,
    worker_liveness,
)

PARALLEL_RESUMES = 20


# -- helpers ----------------------------------------------------------------------------


def steps_of(run_dir: Path) -> list[int]:
    return [e["step"] for e in event_dicts(run_dir / "events.jsonl") if e["type"] == "step"]


def kinds_of(run_dir: Path, *kinds: str) -> list[dict]:
    return [e for e in event_dicts(run_dir / "events.jsonl") if e["type"] in kinds]


def crashed_run(fake_worker) -> Path:
    """A run whose fake worker took a step, then died by SIGKILL (no final event)."""
    fake_worker("crash")
    handle = client.start_run_sync(RunConfig(name="fake"))
    assert handle.wait_exit(30)
    assert handle.summary().status == "crashed"
    return handle.run_dir


def stop_and_wait(run_dir: Path) -> None:
    """``ctl stop`` the serving fake worker and wait for its final event and its exit."""
    result = run_cli("ctl", run_dir.name, "stop")
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: kinds_of(run_dir, "finished"), timeout=30)
    assert lock.wait_free(run_dir / LOCK_FILE, 30)


def worker_processes(run_dir: Path) -> list[psutil.Process]:
    """Live fake workers (not supervisors) of ``run_dir``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[1:3] == ["-m", "fake_worker"] and str(run_dir) in cmdline:
            if process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


# -- racing resumes ---------------------------------------------------------------------


def test_parallel_resumes_start_exactly_one_worker(convdeck_home, fake_worker):
    run_dir = crashed_run(fake_worker)
    fake_worker("serve")
    clis = [start_cli("resume", run_dir.name, "--detach") for _ in range(PARALLEL_RESUMES)]
    results = [(cli.wait(120), *cli.communicate()) for cli in clis]

    winners = [r for r in results if r[0] == 0]
    assert len(winners) == 1, results
    (owner,) = worker_processes(run_dir)
    assert read_pid_file(run_dir)[0] == owner.pid
    for code, _stdout, stderr in results:
        if code != 0:
            assert code == 2, stderr
            (line,) = stderr.strip().splitlines()
            assert f"already running (pid {owner.pid})" in line

    assert wait_for(lambda: len(steps_of(run_dir)) >= 4, timeout=30)
    stop_and_wait(run_dir)
    assert [e["pid"] for e in kinds_of(run_dir, "run_started")][1:] == [owner.pid]
    steps = steps_of(run_dir)
    assert steps == list(range(1, len(steps) + 1))
    assert summarize_run(run_dir).status == "stopped"


def test_a_refused_worker_writes_nothing_and_leaves_the_socket(convdeck_home, fake_worker):
    fake_worker("serve")
    handle = client.start_run_sync(RunConfig(name="fake"))
    socket_path = handle.run_dir / SOCKET_FILE
    assert wait_for(socket_path.exists, timeout=30)
    inode = socket_path.stat().st_ino
    run_started = len(kinds_of(handle.run_dir, "run_started", "worker_exit", "failed"))

    # The real worker, started by hand past every check the client makes.
    second = subprocess.run(
        [sys.executable, "-m", "engine.train.worker", str(handle.run_dir), "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert f"already running (pid {handle.pid()})" in second.stderr
    assert socket_path.stat().st_ino == inode
    assert handle.command_sync("status")["ok"]
    assert len(kinds_of(handle.run_dir, "run_started", "worker_exit", "failed")) == run_started
    assert read_pid_file(handle.run_dir)[0] == handle.pid()
    stop_and_wait(handle.run_dir)


def test_the_client_reports_a_worker_that_found_its_run_owned(convdeck_home, fake_worker):
    fake_worker("serve")
    handle = client.start_run_sync(RunConfig(name="fake"))
    with pytest.raises(lock.AlreadyRunning, match=rf"already running \(pid {handle.pid()}\)"):
        client._spawn(handle.run_dir, resume=True)  # what a racing resume's spawn meets
    assert len(kinds_of(handle.run_dir, "run_started")) == 1
    stop_and_wait(handle.run_dir)
    assert not kinds_of(handle.run_dir, "worker_exit")


# -- hung: SIGSTOP ----------------------------------------------------------------------


def test_sigstop_is_hung_and_resume_force_ends_it_and_carries_on(
    convdeck_home, fake_worker, monkeypatch
):
    monkeypatch.setenv(HEARTBEAT_STALE_ENV, "2")  # the fake worker beats every 50 ms
    fake_worker("serve")
    handle = client.start_run_sync(RunConfig(name="fake"))
    stopped = psutil.Process(handle.pid())
    assert wait_for(lambda: len(steps_of(handle.run_dir)) >= 2, timeout=30)
    stopped.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: summarize_run(handle.run_dir).status == "hung", timeout=30)
        assert worker_liveness(handle.run_dir).pid == stopped.pid
        before = handle.events_path.stat().st_size

        error = one_line_error(run_cli("resume", handle.run_id))
        assert f"is hung: its worker (pid {stopped.pid})" in error and "--force" in error
        assert handle.events_path.stat().st_size == before and stopped.is_running()

        result = run_cli("resume", handle.run_id, "--force", "--detach")
        assert result.returncode == 0, result.stderr
        monkeypatch.delenv(HEARTBEAT_STALE_ENV)  # a busy machine must not make the new one "hung"
    finally:
        if stopped.is_running():
            stopped.send_signal(signal.SIGCONT)
    assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE
    (owner,) = worker_processes(handle.run_dir)
    reached = len(steps_of(handle.run_dir))
    assert wait_for(lambda: len(steps_of(handle.run_dir)) >= reached + 2, timeout=30)
    stop_and_wait(handle.run_dir)

    starts = kinds_of(handle.run_dir, "run_started")
    assert [e["pid"] for e in starts] == [stopped.pid, owner.pid]
    steps = steps_of(handle.run_dir)
    assert steps == list(range(1, len(steps) + 1))
    assert summarize_run(handle.run_dir).status == "stopped"


def test_force_never_ends_a_working_worker(convdeck_home):
    make_run(convdeck_home, "r1", [started()], pid="self")
    with pytest.raises(lock.AlreadyRunning, match=r"already running \(pid \d+\)"):
        client.resume_run_sync("r1", force=True)


def test_a_bad_staleness_setting_is_one_line(convdeck_home, monkeypatch):
    make_run(convdeck_home, "r1", [started()], pid="self")
    monkeypatch.setenv(HEARTBEAT_STALE_ENV, "soon")
    assert HEARTBEAT_STALE_ENV in one_line_error(run_cli("runs"))


# -- the lock itself ---------------------------------------------------------------------


def test_a_held_lock_means_an_owner_whatever_the_pid_file_says(tmp_path):
    run_lock = claim_run(tmp_path)
    try:
        assert worker_liveness(tmp_path) == Liveness(os.getpid())
        gone = dead_pid()
        (tmp_path / "worker.pid").write_text(f"{gone} 0")  # names no live process
        assert worker_liveness(tmp_path) == Liveness(gone, hung=True)  # owned all the same
    finally:
        run_lock.release()
    assert worker_liveness(tmp_path).pid is None  # a free lock: nobody, pid file or not
    assert lock.is_held(tmp_path / LOCK_FILE) is False


def test_a_second_claim_fails_and_probes_never_create_the_file(tmp_path):
    assert lock.is_held(tmp_path / LOCK_FILE) is None and not (tmp_path / LOCK_FILE).exists()
    first = RunLock.claim(tmp_path / LOCK_FILE)
    try:
        assert RunLock.claim(tmp_path / LOCK_FILE, grace=0) is None
        assert lock.is_held(tmp_path / LOCK_FILE) is True
    finally:
        first.release()
    assert lock.is_held(tmp_path / LOCK_FILE) is False


# Image A claims the run, then re-executes itself into image B the way a worker applies a
# remedy; each stops at a line on stdin so the test can look at the lock in between.
_EXEC_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from engine.run.store import claim_run
    run_dir = Path(sys.argv[1])
    def step(name):
        print(name, os.getpid(), flush=True)
        sys.stdin.readline()
    if sys.argv[2] == "A":
        run_lock = claim_run(run_dir)
        step("claimed")
        run_lock.keep_across_exec()
        os.execv(sys.executable, [sys.executable, __file__, str(run_dir), "B"])
    step("exec'd")
    run_lock = claim_run(run_dir)  # adopts the inherited lock
    step("adopted")
    """
)


def test_the_lock_is_held_across_a_re_exec(tmp_path):
    script = tmp_path / "reexec.py"
    script.write_text(_EXEC_SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), "A"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for expected in ("claimed", "exec'd", "adopted"):
            name, pid = child.stdout.readline().split()
            assert name == expected and int(pid) == child.pid  # exec keeps the pid
            assert lock.is_held(run_dir / LOCK_FILE)
            assert RunLock.claim(run_dir / LOCK_FILE, grace=0) is None, expected
            assert worker_liveness(run_dir).pid == child.pid
            child.stdin.write("\n")
            child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert lock.is_held(run_dir / LOCK_FILE) is False  # the kernel let go with the process


def test_an_inherited_descriptor_for_another_file_is_not_adopted(tmp_path, monkeypatch):
    other = RunLock.claim(tmp_path / "other.lock")
    monkeypatch.setenv(lock.LOCK_FD_ENV, str(other.fd))
    try:
        mine = RunLock.claim(tmp_path / LOCK_FILE)
        assert mine is not None and mine.fd != other.fd
        assert lock.LOCK_FD_ENV not in os.environ  # read once, by the image it was meant for
        mine.release()
    finally:
        other.release()


# -- the control socket --------------------------------------------------------------------


def test_start_replaces_a_stale_socket_but_never_a_live_one(tmp_path):
    import socket

    path = tmp_path / SOCKET_FILE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # left behind as by a SIGKILLed worker: nobody listens
    live = ControlServer(path, lambda request: {"ok": True, "who": "live"})
    live.start()
    try:
        assert _ask(path)["who"] == "live"
        with pytest.raises(SocketInUse):
            ControlServer(path, lambda request: {"ok": True, "who": "new"}).start()
        assert _ask(path)["who"] == "live"
    finally:
        live.close()


def _ask(path: Path) -> dict:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b'{"command": "status"}\n')
        return json.loads(sock.makefile("rb").readline())


# -- the real worker: a remedy's re-exec keeps the run locked ---------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_remedy_restart_never_lets_go_of_the_run(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:step=3")
    sets = ["data.image_size=[28, 28]", "train.epochs=1", "train.steps_per_epoch=6"]
    sets += ["train.on_oom=halve-batch", "train.checkpoint_every=100"]
    args = [item for value in sets for item in ("--set", value)]
    result = run_cli("run", "lenet5-digits", *args, "--detach", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    started_line = json.loads(result.stdout.splitlines()[-1])
    run_dir, pid = Path(started_line["run_dir"]), started_line["pid"]

    free_before_the_end: list[int] = []
    done = threading.Event()

    def probe() -> None:  # the lock, looked at as often as a busy front end would
        while not done.is_set():
            if not lock.is_held(run_dir / LOCK_FILE) and not kinds_of(run_dir, "finished", "failed"):
                free_before_the_end.append(len(steps_of(run_dir)))
            done.wait(0.005)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        restarting = lambda: any(e.get("restarting") for e in kinds_of(run_dir, "log"))  # noqa: E731
        assert wait_for(restarting, timeout=300), (run_dir / "worker.log").read_text()[-2000:]
        # Past every check the client makes: the worker itself refuses, mid-restart or after.
        second = subprocess.run(
            [sys.executable, "-m", "engine.train.worker", str(run_dir), "--resume"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == EXIT_ALREADY_RUNNING, second.stderr
        assert f"already running (pid {pid})" in second.stderr
        assert wait_for(lambda: kinds_of(run_dir, "finished", "failed"), timeout=300)
        assert lock.wait_free(run_dir / LOCK_FILE, 60)
    finally:
        done.set()
        prober.join(5)
    assert not free_before_the_end
    starts = kinds_of(run_dir, "run_started")
    assert [e["pid"] for e in starts] == [pid, pid]
    assert kinds_of(run_dir, "finished")[-1]["reason"] == "completed"
