"""One worker per run: an exclusive ``flock`` on the run's lock file, held for the worker's life.

The kernel, not a status read from disk, decides who owns a run. A worker
takes the lock before it touches anything else in the run directory (pid
file, socket, events) and never lets go of it: the lock belongs to the open
file, so it lives as long as the descriptor does, and the kernel closes that
when the process dies however it dies (SIGKILL, a CUDA fault, the OOM
killer). A worker that re-executes itself for a remedy hands the descriptor
across ``execv`` (:meth:`RunLock.keep_across_exec`), so there is no moment
between the two images in which another worker could take the run.

Readers never hold the lock: :func:`is_held` takes a shared lock without
waiting and drops it at once. A worker's own attempt retries for
:data:`CLAIM_GRACE_SECONDS`, so such a probe (or a supervisor appending its
report on a dead worker) never turns a worker away.

TF-free and cheap to import: the supervisor and the fake worker use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from engine.errors import ConfigError

LOCK_FD_ENV = "CONVDECK_LOCK_FD"
"""The locked descriptor's number, set only for the image an ``execv`` starts."""

STARTED_FD_ENV = "CONVDECK_STARTED_FD"
"""A pipe the spawning side reads: the worker writes its pid, or ``busy PID``."""

EXIT_ALREADY_RUNNING = 75
"""A worker that found its run owned exits so (EX_TEMPFAIL), having written nothing."""

# Long beside a probe (microseconds) or a supervisor's one-line report (milliseconds),
# short beside a person waiting for `already running`.
CLAIM_GRACE_SECONDS = 2.0
_RETRY_SECONDS = 0.02


class AlreadyRunning(ConfigError):
    """Another worker owns the run; ``pid`` is that worker's (None when unknown)."""

    def __init__(self, run_id: str, pid: int | None, hint: str = "") -> None:
        self.run_id = run_id
        self.pid = pid
        owner = f"pid {pid}" if pid is not None else "pid unknown"
        hint = hint or f"watch it with `convdeck attach {run_id}`"
        super().__init__(f"run {run_id} already running ({owner}); {hint}")


class RunLock:
    """The exclusive lock on one run's lock file, held through an open descriptor.

    Made by :meth:`claim`; the holder keeps the object for its whole life and
    never closes it: the kernel releases the lock when the process ends.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def claim(cls, path: Path, grace: float | None = None) -> RunLock | None:
        """Take the lock on ``path`` (created if missing), or None if another process holds it.

        An inherited lock (:meth:`keep_across_exec`) on the same file is
        adopted as it is: it was never released.

        Args:
            path: the lock file.
            grace: seconds to keep trying (:data:`CLAIM_GRACE_SECONDS` when None).
        """
        inherited = _inherited(path)
        if inherited is not None:
            return cls(path, inherited)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _flock_within(fd, fcntl.LOCK_EX, CLAIM_GRACE_SECONDS if grace is None else grace):
            os.close(fd)
            return None
        return cls(path, fd)

    def keep_across_exec(self) -> None:
        """Let the next ``execv`` image inherit the locked descriptor, and tell it the number."""
        os.set_inheritable(self.fd, True)
        os.environ[LOCK_FD_ENV] = str(self.fd)

    def release(self) -> None:
        """Let go at once (the supervisor after its report; tests). Workers never call it."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _inherited(path: Path) -> int | None:
    """The descriptor :meth:`RunLock.keep_across_exec` left for this image, if it locks ``path``."""
    text = os.environ.pop(LOCK_FD_ENV, None)
    if text is None:
        return None
    try:
        fd = int(text)
        if not _same_file(fd, path):
            return None
        # The same open file already holds LOCK_EX: asking again cannot fail or wait.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ValueError, OSError):
        return None
    os.set_inheritable(fd, False)  # no child of this image may keep the run locked
    return fd


def _same_file(fd: int, path: Path) -> bool:
    held, named = os.fstat(fd), os.stat(path)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _flock_within(fd: int, operation: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY_SECONDS)


def is_held(path: Path) -> bool | None:
    """Whether a process holds the lock on ``path`` now; None when there is no lock file.

    Takes a shared lock without waiting and drops it: readers never block a
    worker for longer than this call, and never create the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def wait_free(path: Path, timeout: float) -> bool:
    """Poll until nobody holds the lock on ``path``; False if ``timeout`` ran out first."""
    deadline = time.monotonic() + timeout
    while is_held(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_RETRY_SECONDS * 5)
    return True


def tell_spawner(line: str) -> None:
    """Answer the process that spawned this worker (through :data:`STARTED_FD_ENV`), once."""
    text = os.environ.pop(STARTED_FD_ENV, None)
    if text is None:
        return
    with contextlib.suppress(ValueError, OSError):
        fd = int(text)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)
