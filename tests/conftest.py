"""Shared fixtures: an isolated convdeck home, the CLI as a subprocess, fabricated runs.

Every test that touches runs gets its own ``CONVDECK_HOME``. It is a short
directory under /tmp rather than pytest's deep ``tmp_path``, because a
control socket's path must fit the 108 bytes of ``sockaddr_un``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from engine.config import RunConfig, config_to_toml

TESTS_DIR = Path(__file__).parent
CLI_TIMEOUT = 120.0

# No test reads or writes the user's own ~/.convdeck (runs, the queue, convdeck.toml): tests
# that touch runs take the convdeck_home fixture; every other one lands in this scratch home.
_SCRATCH_HOME = Path(tempfile.mkdtemp(prefix="cdk-session-", dir="/tmp"))
os.environ["CONVDECK_HOME"] = str(_SCRATCH_HOME)


@pytest.fixture
def convdeck_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh CONVDECK_HOME for this test (inherited by subprocesses)."""
    home = Path(tempfile.mkdtemp(prefix="cdk-", dir="/tmp"))
    monkeypatch.setenv("CONVDECK_HOME", str(home))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    yield home
    _stop_workers(home)
    shutil.rmtree(home, ignore_errors=True)


def _stop_workers(home: Path) -> None:
    """Kill workers a test left running, found by their own pid files."""
    for pid_file in home.glob("runs/*/worker.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            process = psutil.Process(pid)
            if process.pid != os.getpid() and str(home) in " ".join(process.cmdline()):
                process.kill()
        except (ValueError, OSError, psutil.Error):
            pass


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the client spawn tests/fake_worker.py; call it with the mode to play."""
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("CONVDECK_WORKER_MODULE", "fake_worker")

    def use(mode: str) -> None:
        monkeypatch.setenv("FAKE_WORKER_MODE", mode)

    use("complete")
    return use


def cli_command() -> list[str]:
    """The installed console script, or the module when it is not installed."""
    script = Path(sys.executable).parent / "convdeck"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui.cli"]


def run_cli(*args: str, timeout: float = CLI_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run ``convdeck ARGS`` to its end with the test's environment; text output."""
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def start_cli(*args: str) -> subprocess.Popen:
    """Start ``convdeck ARGS`` in the background, stdout and stderr as pipes."""
    return subprocess.Popen(
        [*cli_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Assert the CLI failed with exit 2 and exactly one stderr line, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- fabricated runs -------------------------------------------------------------


def make_run(
    home: Path,
    run_id: str,
    events: list[dict | str] = (),
    config: RunConfig | None = None,
    pid: int | str | None = None,
) -> Path:
    """A run directory as a worker would leave it.

    Args:
        home: the convdeck home.
        run_id: the directory name.
        events: dicts become JSON lines; strings are written as they are
            (torn or garbage lines).
        config: written as config.toml (a small lenet5-digits by default).
        pid: ``"self"`` records this test process as a live worker (with a
            fresh heartbeat), an int records that pid, None records none.
    """
    run_dir = home / "runs" / run_id
    (run_dir / "checkpoints").mkdir(parents=True)
    config = config or RunConfig(name="lenet5-digits")
    (run_dir / "config.toml").write_text(config_to_toml(config))
    (run_dir / "events.jsonl").write_text("".join(_event_text(e) for e in events))
    if pid == "self":
        _record_pid(run_dir, os.getpid())
        (run_dir / "heartbeat").touch()
    elif pid is not None:
        (run_dir / "worker.pid").write_text(f"{pid} 0")
    return run_dir


def _event_text(event: dict | str) -> str:
    if isinstance(event, str):
        return event
    # Field order as EventWriter writes it: type first, then time. Now, unless given: a live
    # run whose steps are years old would rightly read as stalled.
    return json.dumps({"type": event["type"], "time": time.time(), **event}) + "\n"


def _record_pid(run_dir: Path, pid: int) -> None:
    (run_dir / "worker.pid").write_text(f"{pid} {psutil.Process(pid).create_time()}")


def event_dicts(path: Path) -> list[dict]:
    """The readable events of a file as plain dicts with every declared field, for tests
    that look fields up by name (engine code reads the typed events)."""
    from engine.run.events import read_events
    from engine.run.protocol import to_dict

    return [to_dict(event, defaults=True) for event in read_events(path)]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def started(step: int = 0, **fields) -> dict:
    return {
        "type": "run_started",
        "run_id": "x",
        "pid": 1,
        "devices": ["CPU:0"],
        "config": {"name": "lenet5-digits", "model": {"arch": "lenet5"}},
        "steps_per_epoch": 10,
        "epochs": 2,
        "resumed_from_step": step or None,
        **fields,
    }


def step(n: int, epoch: int = 1, loss: float = 0.5) -> dict:
    return {
        "type": "step",
        "step": n,
        "epoch": epoch,
        "loss": loss,
        "accuracy": 0.8,
        "learning_rate": 1e-3,
        "images_per_sec": 900.0,
        "step_time": 0.01,
    }


def epoch_end(epoch: int, val_accuracy: float) -> dict:
    return {
        "type": "epoch_end",
        "epoch": epoch,
        "loss": 0.3,
        "accuracy": 0.9,
        "val_loss": 0.35,
        "val_accuracy": val_accuracy,
    }


# -- a control socket to talk to -----------------------------------------------------


class FakeControlServer:
    """A thread serving RUN_DIR/control.sock: each request line gets ``reply(request)``.

    ``silent=True`` accepts connections and never answers (for timeouts).
    """

    def __init__(self, run_dir: Path, reply: Callable[[dict], dict], silent: bool = False):
        self.requests: list[dict] = []
        self.reply = reply
        self.silent = silent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:  # through /proc: pytest's paths can outgrow sockaddr_un
            self.sock.bind(f"/proc/self/fd/{fd}/control.sock")
        finally:
            os.close(fd)
        self.sock.listen(4)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            for line in conn.makefile("rb"):
                request = json.loads(line)
                self.requests.append(request)
                if self.silent:
                    time.sleep(5)
                    return
                conn.sendall((json.dumps(self.reply(request)) + "\n").encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def control_server() -> Iterator[Callable[..., FakeControlServer]]:
    """Start fake control servers on run directories; closed after the test."""
    servers: list[FakeControlServer] = []

    def start(run_dir: Path, reply: Callable[[dict], dict] | None = None, silent=False):
        server = FakeControlServer(run_dir, reply or (lambda r: {"ok": True, **r}), silent)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


async def until(pilot, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let a Textual app under ``pilot`` run until ``condition()`` holds (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
