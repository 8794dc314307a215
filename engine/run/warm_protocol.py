"""The warm pair's side of a hand-off: a worker that loads TensorFlow before it has a run.

A run's worker spends most of its first seconds importing TensorFlow. A warm
pair does that ahead: ``python -m engine.run.supervisor --warm`` starts its
worker as ``python -m engine.train.worker --warm``, detached and with the
report pipe exactly as for a run (:func:`engine.run.client._spawn`), but with
no run directory yet:

1. The worker loads what a run imports and touches no device (nothing is
   held on a GPU), says :data:`READY` on the report pipe, and blocks reading
   one line on its stdin, a pipe from its supervisor.
2. The supervisor blocks reading one line on its stdin, a pipe whose other
   end only the spawning process holds (:mod:`engine.run.warm`).
3. The hand-off is that line (:class:`HandOff`), written once; the spawner
   closes its end with it, and the supervisor reads no more, so a pair is
   handed one run at most. The supervisor sends its own output to the run's
   worker.log, passes the line down and from then on supervises as for a
   cold start; the worker sends its output there too and runs as
   ``python -m engine.train.worker RUN_DIR ARGS...`` would (the run's lock
   first, worker.pid, its pid on the report pipe).
4. End of file instead of a line (the spawner closed the pipe, quit or
   died), a SIGTERM, or the warm worker's death: both exit at once, status
   0, having written nothing anywhere.

TF-free and light: the supervisor imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.run.lock import STARTED_FD_ENV
from engine.run.store import WORKER_LOG

WARM_FLAG = "--warm"
"""In place of RUN_DIR, for both the supervisor and the worker module."""

READY = "ready"
"""The warm worker's first line on the report pipe: loaded, waiting for its run."""

MAX_LINE_BYTES = 64 << 10
"""A hand-off line is a path and a few arguments; anything longer is refused."""


@dataclass(frozen=True)
class HandOff:
    """The one line that gives a warm pair its run."""

    run_dir: Path
    worker_args: list[str] = field(default_factory=list)
    """What follows RUN_DIR on a cold worker's command line (``--resume`` ...)."""

    def encode(self) -> bytes:
        return (json.dumps({"run_dir": str(self.run_dir), "worker_args": self.worker_args}) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes) -> HandOff:
        """Raises ValueError for anything but the line :meth:`encode` writes."""
        fields = json.loads(line)
        run_dir, worker_args = fields["run_dir"], fields["worker_args"]
        if not isinstance(run_dir, str) or not all(isinstance(arg, str) for arg in worker_args):
            raise ValueError(f"not a hand-off: {line[:200]!r}")
        return cls(Path(run_dir), list(worker_args))

    def worker_argv(self) -> list[str]:
        """The worker's arguments, as a cold start passes them."""
        return [str(self.run_dir), *self.worker_args]


# -- the worker's side -------------------------------------------------------------


def await_hand_off(load: Callable[[], None]) -> list[str] | None:
    """Load, say :data:`READY`, and wait for the run: its worker arguments, or None at end of file.

    Until the run comes, SIGTERM and SIGINT end the process at once (it holds
    nothing); the worker's own handlers take over with its arguments.

    Args:
        load: imports what a run needs; it must not touch a device.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    load()
    _tell_ready()
    line = sys.stdin.buffer.readline(MAX_LINE_BYTES)
    if not line.endswith(b"\n"):
        return None  # end of file: the spawner let go, or a torn line from a dying one
    hand_off = HandOff.decode(line)
    redirect_output(hand_off.run_dir / WORKER_LOG)
    return hand_off.worker_argv()


def _tell_ready() -> None:
    """:data:`READY` on the report pipe, leaving it open for the answer a run's claim writes."""
    with contextlib.suppress(KeyError, ValueError, OSError):
        os.write(int(os.environ[STARTED_FD_ENV]), f"{READY}\n".encode())


# -- the supervisor's side ---------------------------------------------------------


def wait_for_line(fd: int, child: subprocess.Popen, pidfd: int | None) -> bytes | None:
    """Block until one line comes on ``fd``; None at end of file or once ``child`` has ended.

    Signals that come meanwhile run their handlers and the wait goes on.
    """
    data = b""
    while True:
        watched = [fd] if pidfd is None else [fd, pidfd]
        ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.5)
        if child.poll() is not None:
            return None
        if fd not in ready:
            continue
        chunk = os.read(fd, MAX_LINE_BYTES)
        data += chunk
        if data.endswith(b"\n"):
            return data
        if not chunk or len(data) > MAX_LINE_BYTES:
            return None


def redirect_output(log_path: Path) -> None:
    """Send this process's stdout and stderr to the run's log, its stdin to /dev/null, as a cold start has them."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(devnull, 0)
    finally:
        os.close(log)
        os.close(devnull)
