"""A warm worker for the next run: TensorFlow loaded while a person chooses what to train.

A cold start spends most of its first seconds importing TensorFlow. A warm
pair (a supervisor and its worker, started as for a run but with none:
:mod:`engine.run.warm_protocol`) does that ahead, holding no device, and
:meth:`WarmWorker.hand_off` gives it a run directory: from then on the run
is exactly a cold-started one (the run's lock, worker.pid, the answer on the
report pipe, supervision and alerts, remedy restarts).

The pair reads its run on a pipe only this process holds: when this process
closes it, quits or dies, the pair ends, leaving nothing behind. A warm
worker is passed over, and the run started cold, once it has been handed a
run, once it has ended, and when it is stale: the environment, the working
directory or the engine's code on disk changed since it started, so it
would run with what was true then.

The TUI keeps one in a :class:`WarmSlot`; the CLI, the queue and sweeps start
cold.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import engine
from engine.run.client import (
    RunHandle,
    events_size,
    handle_from_answer,
    read_worker_answer,
    spawn_env,
    supervisor_command,
)
from engine.run.events import STEP_LINE_PREFIX
from engine.run.store import PID_FILE
from engine.run.warm_protocol import READY, WARM_FLAG, HandOff

# How long a warm worker still loading may take to say it is ready, once handed a run.
LOAD_SECONDS = 120.0
# How often a replacement waits to see the run it follows train.
RUNNING_POLL_SECONDS = 0.25
# After the pair ended without an answer: how long its supervisor may take to exit.
EXIT_WAIT_SECONDS = 2.0
# Variables the TUI sets for itself (the Eval view's cell size), which no worker reads.
UI_ONLY_ENV = ("TEXTUAL_",)
# The code a warm worker has loaded: a change here makes it stale.
CODE_ROOTS = (Path(engine.__file__).parent,)


class WarmWorker:
    """The spawning side of one warm pair. Made by :meth:`start`."""

    def __init__(self, supervisor: subprocess.Popen, report_fd: int, code_roots: Iterable[Path]) -> None:
        self.supervisor = supervisor
        self.report_fd = report_fd
        self.code_roots = tuple(code_roots)
        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        self.code_stamp = code_stamp(self.code_roots)
        self.used = False
        """Handed a run or closed: it takes no other."""
        self._ready = False

    @classmethod
    def start(cls, code_roots: Iterable[Path] = CODE_ROOTS) -> WarmWorker:
        """Start a warm pair, detached like a run's (a session of its own), its output discarded until its run comes.

        Args:
            code_roots: folders whose ``*.py`` files the worker loads; a change there makes it stale.
        """
        read_fd, write_fd = os.pipe()
        try:
            supervisor = subprocess.Popen(
                supervisor_command(write_fd, WARM_FLAG),
                start_new_session=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(write_fd,),
                env=spawn_env(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return cls(supervisor, read_fd, code_roots)

    @property
    def pid(self) -> int:
        """The warm supervisor's pid (its worker is its child)."""
        return self.supervisor.pid

    def ready(self) -> bool:
        """Whether the worker has loaded TensorFlow and waits for its run (never blocks)."""
        if not self._ready and not self.used:
            with contextlib.suppress(OSError):
                readable, _, _ = select.select([self.report_fd], [], [], 0)
                if readable:
                    self._ready = os.read(self.report_fd, 64).decode(errors="replace").split() == [READY]
        return self._ready

    def stale(self) -> str | None:
        """Why a run started now must not use this worker (what changed since it started), or None."""
        changed = sorted(
            name
            for name in self.env.keys() | os.environ.keys()
            if self.env.get(name) != os.environ.get(name) and not name.startswith(UI_ONLY_ENV)
        )
        if changed:
            return f"the environment changed ({', '.join(changed)})"
        if os.getcwd() != self.cwd:
            return "the working directory changed"
        if code_stamp(self.code_roots) != self.code_stamp:
            return "the engine's code changed on disk"
        return None

    def usable(self) -> bool:
        """Not yet handed a run, still there, and not stale."""
        return not self.used and self.supervisor.poll() is None and self.stale() is None

    def hand_off(self, run_dir: Path, worker_args: Iterable[str] = ()) -> RunHandle | None:
        """Give the pair the run in ``run_dir`` (made beforehand, as for a cold start).

        Args:
            run_dir: the run's directory.
            worker_args: what follows RUN_DIR on the worker's command line.

        Returns:
            The run's handle, as :func:`engine.run.client._spawn` returns it; None when
            this pair cannot take the run (handed one already, ended, stale), which is
            then untouched: start it cold.

        Raises:
            AlreadyRunning: the worker found the run owned and exited, writing nothing.
        """
        if not self.usable():
            return None
        self.used = True
        worker_args = list(worker_args)
        spawn_offset = events_size(run_dir)
        try:
            assert self.supervisor.stdin is not None
            self.supervisor.stdin.write(HandOff(run_dir, worker_args).encode())
            self.supervisor.stdin.close()  # one run a pair: it reads no more
        except OSError:  # the pair ended just now
            self._let_go()
            return None
        try:
            answer = self._answer()
        finally:
            os.close(self.report_fd)
        if not answer and self._ended_unused(run_dir):
            return None
        return handle_from_answer(run_dir, self.supervisor, answer, worker_args, spawn_offset)

    def _answer(self) -> list[str]:
        """The worker's answer to its run, past its :data:`READY` if that was not read yet."""
        if self._ready:
            return read_worker_answer(self.report_fd, self.supervisor)
        words = read_worker_answer(self.report_fd, self.supervisor, LOAD_SECONDS)
        if words[:1] == [READY]:
            words = words[1:] or read_worker_answer(self.report_fd, self.supervisor)
        return words

    def _ended_unused(self, run_dir: Path) -> bool:
        """Whether the pair ended without taking the run (it died before it read the line).

        A supervisor that took a run exits with its worker's code, and a worker
        that exits 0 has claimed the run (worker.pid) before anything else.
        """
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.supervisor.wait(EXIT_WAIT_SECONDS)
        return self.supervisor.returncode == 0 and not (run_dir / PID_FILE).exists()

    def close(self, timeout: float = EXIT_WAIT_SECONDS) -> None:
        """End the pair if it was never handed a run (it exits at end of file); a handed-off one is the run's.

        Args:
            timeout: seconds to wait for the supervisor to exit (reaped, no zombie left).
        """
        if self.used:
            return
        self.used = True
        self._let_go()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.supervisor.wait(timeout)

    def _let_go(self) -> None:
        with contextlib.suppress(OSError):
            assert self.supervisor.stdin is not None
            self.supervisor.stdin.close()
        with contextlib.suppress(OSError):
            os.close(self.report_fd)


class WarmSlot:
    """At most one warm pair, kept for the next start; safe to use from any thread.

    Args:
        start: makes a warm pair (:meth:`WarmWorker.start`; tests pass their own).
    """

    def __init__(self, start: Callable[[], WarmWorker] = WarmWorker.start) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._worker: WarmWorker | None = None
        self._closed = False

    def fill(self) -> None:
        """Start a warm pair unless a usable one is here (a stale or ended one is replaced).

        Blocks for the spawn (tens of milliseconds): call it off a UI's thread.
        """
        with self._lock:
            if self._closed or (self._worker is not None and self._worker.usable()):
                return
            old, self._worker = self._worker, None
        if old is not None:
            old.close()
        worker = self._start()
        with self._lock:
            if not self._closed and self._worker is None:
                self._worker = worker
                return
        worker.close()  # closed, or filled by another thread meanwhile

    def fill_once_running(self, run: RunHandle) -> None:
        """:meth:`fill` once ``run`` has trained its first step, or ended: loading TensorFlow
        beside a starting run would slow its start (threefold on two cores). Blocks until then.
        """
        while not self._closed and run.is_alive() and not _has_stepped(run):
            time.sleep(RUNNING_POLL_SECONDS)
        self.fill()

    def ready(self) -> bool:
        """Whether a warm worker here has loaded TensorFlow and waits for its run."""
        with self._lock:
            worker = self._worker
        return worker is not None and worker.ready()

    def take(self) -> WarmWorker | None:
        """The warm pair for a start now, if any; the slot is empty until :meth:`put_back` or :meth:`fill`."""
        with self._lock:
            worker, self._worker = self._worker, None
        return worker

    def put_back(self, worker: WarmWorker | None) -> None:
        """Return a pair :meth:`take` gave out: kept if still usable (the start failed before the hand-off)."""
        if worker is None or worker.used:
            return  # a handed-off pair is its run's now
        if not worker.usable():
            worker.close()
            return
        with self._lock:
            if not self._closed and self._worker is None:
                self._worker = worker
                return
        worker.close()

    def close(self) -> None:
        """End the pair held here, and start no other."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()


def _has_stepped(run: RunHandle) -> bool:
    """Whether the run's worker has written a step (the file is small until it has)."""
    try:
        with open(run.events_path, "rb") as events:
            events.seek(run.spawn_offset)
            return b"\n" + STEP_LINE_PREFIX in b"\n" + events.read()
    except OSError:
        return False


def code_stamp(roots: Iterable[Path]) -> tuple:
    """Every ``*.py`` file under ``roots`` with its modification time and size: equal while the code is."""
    stamp = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            with contextlib.suppress(OSError):
                status = path.stat()
                stamp.append((str(path), status.st_mtime_ns, status.st_size))
    return tuple(stamp)
