"""The one way front ends talk to runs: start, find, follow events, send commands.

A run is a worker process (``python -m engine.train.worker RUN_DIR``) in its own
session, so it outlives the terminal that started it. Everything a viewer
needs is in the run directory: ``events.jsonl`` to read and ``control.sock``
to steer. This module wraps both behind :class:`RunHandle`.

Imports neither TensorFlow nor Textual: the CLI and the TUI load it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError, RunConfig
from engine.remedies import check_remedy
from engine.run import lock
from engine.run.checkpoint_files import CHECKPOINTS_DIR, check_something_to_resume
from engine.run.control import COMMANDS
from engine.run.events import EVENTS_FILE, STEP_LINE_PREFIX, EventTail
from engine.run.facts import LIVE_STATUSES, RunFacts
from engine.run.lock import AlreadyRunning
from engine.run.protocol import TERMINAL_EVENTS, Event, RunStarted
from engine.run.store import (
    CONFIG_FILE,
    LOCK_FILE,
    SOCKET_FILE,
    WORKER_LOG,
    create_run_dir,
    find_run_dir,
    heartbeat_stale_seconds,
    read_config,
    recorded_worker,
    summarize_run,
    worker_alive,
    worker_liveness,
)
from engine.run.store import list_runs as _list_runs

if TYPE_CHECKING:
    from engine.run.warm import WarmWorker

CONTROL_COMMANDS = COMMANDS  # the worker's own lists, so front ends check what it accepts
# History is read in chunks so a viewer draws the first part of a long run
# before the last part is parsed, and the event loop stays responsive.
HISTORY_CHUNK_BYTES = 1 << 20
# The worker reports its pid (or that the run is owned) within a second; a
# machine busy importing TensorFlow elsewhere can make it much slower.
SUPERVISOR_REPORT_SECONDS = 30.0
# A worker that just wrote its final event is still saving and closing: a
# resume waits this long for it to let go of the run before saying it runs.
EXITING_WORKER_WAIT_SECONDS = 10.0
# `resume --force`: how long a killed hung worker may take to let go of the run.
FORCE_WAIT_SECONDS = 30.0
# sockaddr_un holds 108 bytes with the NUL; deep run directories overflow it.
_MAX_SOCKET_PATH = 107


class RunHandle:
    """One run directory, with or without a live worker.

    Args:
        run_dir: the run's directory.
        process: the worker, when this process started it (a
            :class:`SupervisedWorker`: exit codes and liveness then come from
            it directly).
        spawn_offset: the size of events.jsonl when the worker was spawned,
            so a follower can skip what earlier workers wrote.
    """

    def __init__(
        self,
        run_dir: Path,
        process: SupervisedWorker | subprocess.Popen | None = None,
        spawn_offset: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.process = process
        self.spawn_offset = spawn_offset
        self.unreadable_lines = 0
        """Lines of events.jsonl that :meth:`events` skipped: torn, garbage or wrong-typed."""

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    @property
    def events_path(self) -> Path:
        return self.run_dir / EVENTS_FILE

    @property
    def socket_path(self) -> Path:
        return self.run_dir / SOCKET_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / WORKER_LOG

    def config(self) -> RunConfig:
        """The run's current config; ConfigError when config.toml is unreadable."""
        return read_config(self.run_dir)

    def summary(self) -> RunFacts:
        """The run's facts, read from the whole events file, and its liveness.

        The one fold of :mod:`engine.run.facts`; a long run takes a fraction of
        a second (step lines are skipped unparsed but for those that matter).
        """
        return _with_preset_name(summarize_run(self.run_dir))

    # -- the worker process --------------------------------------------------

    def pid(self) -> int | None:
        """The live worker's pid, or None."""
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        return worker_alive(self.run_dir)

    def is_alive(self) -> bool:
        """True while the worker runs (for a handle that spawned it: not yet exited)."""
        return self.pid() is not None

    def exit_code(self) -> int | None:
        """The worker's exit code, known only to the process that spawned it."""
        return self.process.poll() if self.process is not None else None

    def wait_exit(self, timeout: float | None = None, poll_interval: float = 0.1) -> bool:
        """Block until the worker has exited; False if ``timeout`` ran out first."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_interval)
        return True

    def terminate(self) -> bool:
        """Send SIGTERM (the worker checkpoints, then ends); False if none was alive."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return True

    def last_log_line(self) -> str:
        """The last non-empty line of worker.log, to explain a worker that died."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
                lines = handle.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    # -- events ----------------------------------------------------------------

    async def events(
        self,
        from_start: bool = True,
        poll_interval: float = 0.2,
        *,
        offset: int | None = None,
        until_done: bool = False,
        history_steps: int | None = None,
    ) -> AsyncIterator[list[Event]]:
        """Yield the run's events in batches: the history first, then new ones as they come.

        Torn, garbage and wrong-typed lines are skipped and counted in
        ``unreadable_lines``. Without ``until_done`` it follows the
        file forever: the caller breaks out or cancels.

        Args:
            from_start: replay the history; False starts at the current end.
            poll_interval: seconds between looks at the file once caught up.
            offset: a byte offset to start at (overrides ``from_start``), e.g.
                ``spawn_offset`` to follow only what a resumed worker writes.
            until_done: stop once caught up after a ``finished`` or ``failed``
                event (a later ``run_started`` re-opens the run), or once the
                worker is gone and the file is drained.
            history_steps: replay about this many ``step`` events of the
                history, evenly spaced, instead of all (every other event
                type is kept, and the step before each of them): a million
                steps reach the live tail in a second or two. New events
                are never thinned.
        """
        start = self._start_offset(from_start, offset)
        stride = _stride(self.events_path, start, history_steps)
        history = _HistoryTail(self.events_path, start, stride)
        done = False
        while not history.exhausted:
            batch = await asyncio.to_thread(history.read_new, HISTORY_CHUNK_BYTES)
            self.unreadable_lines = history.skipped
            if batch:
                done = _still_done(batch, done)
                yield batch
        tail = EventTail(self.events_path, history.offset)
        while True:
            batch = tail.read_new(HISTORY_CHUNK_BYTES)
            self.unreadable_lines = history.skipped + tail.skipped
            if batch:
                done = _still_done(batch, done)
                yield batch
                if until_done and done and tail.at_end():
                    return
            elif until_done and (done or not self.is_alive()):
                # The worker may have flushed its last lines just before exiting.
                if last := tail.read_new(HISTORY_CHUNK_BYTES):
                    yield last
                return
            else:
                await asyncio.sleep(poll_interval)

    def _start_offset(self, from_start: bool, offset: int | None) -> int:
        if offset is not None:
            return offset
        if from_start:
            return 0
        try:
            return self.events_path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- control commands ------------------------------------------------------

    async def command(self, command: str, timeout: float = 5.0, **args: Any) -> dict:
        """Send one control command and return the worker's reply.

        Never raises for a dead or unreachable worker or a timeout: the reply
        is then ``{"ok": False, "error": "...", "unreachable": True}``.

        Args:
            command: pause, resume, stop, checkpoint, remedy or status.
            timeout: seconds for connecting, sending and the reply together.
            **args: further request fields, e.g. ``name="halve-batch"``.
        """
        request = _encode_request(command, args)
        try:
            with _connectable(self.socket_path) as path:
                line = await asyncio.wait_for(_exchange_async(path, request), timeout)
        except Exception as error:  # noqa: BLE001 - every failure becomes a reply
            return self._unreachable(command, error, timeout)
        return _decode_reply(line)

    def command_sync(self, command: str, timeout: float = 5.0, **args: Any) -> dict:
        """:meth:`command` for scripts and code without an event loop."""
        request = _encode_request(command, args)
        try:
            with _connectable(self.socket_path) as path:
                line = _exchange_sync(path, request, timeout)
        except Exception as error:  # noqa: BLE001 - every failure becomes a reply
            return self._unreachable(command, error, timeout)
        return _decode_reply(line)

    def _unreachable(self, command: str, error: Exception, timeout: float) -> dict:
        return {
            "ok": False,
            "error": f"run {self.run_id}: {command!r} got no reply: {_why(error, timeout)}",
            "unreachable": True,
        }


def _stride(path: Path, start: int, history_steps: int | None) -> int:
    """Keep one step line in this many to replay about ``history_steps`` of them."""
    if not history_steps:
        return 1
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(start)
            sample = handle.read(1 << 16)
    except OSError:
        return 1
    lines_in_sample = max(1, sample.count(b"\n"))
    estimated_lines = (size - start) * lines_in_sample / max(1, len(sample))
    return max(1, int(estimated_lines // history_steps))


class _HistoryTail(EventTail):
    """Reads the history: the file as it was when following began, nothing later.

    With ``stride`` > 1 it skips step lines unparsed, keeping one in
    ``stride``; the step just before any other event, and the last of each
    read, are kept too, so figures beside an epoch end or at the tail are
    current.
    """

    def __init__(self, path: Path, offset: int, stride: int) -> None:
        super().__init__(path, offset)
        self.stride = stride
        self._steps_seen = 0
        self._stuck = False
        try:
            self.end = path.stat().st_size
        except FileNotFoundError:
            self.end = offset

    @property
    def exhausted(self) -> bool:
        """True once the history is read (or its last line is still being written)."""
        return self.offset >= self.end or self._stuck

    def read_new(self, max_bytes: int = 8 << 20) -> list[Event]:
        start = self.offset
        events = self._read(min(max_bytes, self.end - self.offset))
        # No whole line in the rest: a line still being written, left to the live tail.
        self._stuck = self.offset == start
        return events

    def _read(self, max_bytes: int) -> list[Event]:
        if max_bytes <= 0:
            return []
        if self.stride == 1:
            return super().read_new(max_bytes)
        chunk = self._read_complete_lines(max_bytes)
        events: list[Event] = []
        pending: bytes | None = None  # the latest step line not yet kept
        for line in chunk.splitlines():
            if line.startswith(STEP_LINE_PREFIX):
                self._steps_seen += 1
                if self._steps_seen % self.stride:
                    pending = line
                    continue
            elif pending is not None:
                self._keep(pending, events)
            pending = None
            self._keep(line, events)
        if pending is not None:
            self._keep(pending, events)
        return events

    def _read_complete_lines(self, max_bytes: int) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(max_bytes)
        except FileNotFoundError:
            return b""
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return chunk[:end]

    def _keep(self, line: bytes, events: list[Event]) -> None:
        events.extend(self.parse_lines([line]))


def _still_done(batch: list[Event], done: bool) -> bool:
    """Whether the run is over after ``batch``: a terminal event, unless restarted since."""
    for event in batch:
        if isinstance(event, TERMINAL_EVENTS):
            done = True
        elif isinstance(event, RunStarted):
            done = False
    return done


def _encode_request(command: str, args: dict) -> bytes:
    return (json.dumps({"command": command, **args}) + "\n").encode()


def _decode_reply(line: bytes) -> dict:
    if not line.strip():
        return {"ok": False, "error": "the worker closed the connection without a reply"}
    try:
        reply = json.loads(line)
    except ValueError:
        return {"ok": False, "error": f"unreadable reply from the worker: {line[:200]!r}"}
    if not isinstance(reply, dict):
        return {"ok": False, "error": f"unexpected reply from the worker: {reply!r}"}
    return reply


def _why(error: Exception, timeout: float) -> str:
    if isinstance(error, (asyncio.TimeoutError, TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(error, FileNotFoundError):
        return "no control socket (the worker is not running, or still starting)"
    if isinstance(error, ConnectionRefusedError):
        return "nobody listens on the control socket (the worker has exited)"
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def _connectable(path: Path) -> Iterator[str]:
    """A path to ``path`` short enough for AF_UNIX.

    A deep run directory (e.g. under a test's tmp_path) makes a socket path
    longer than sockaddr_un holds; on Linux the directory can instead be
    reached through its file descriptor in /proc/self/fd.
    """
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


async def _exchange_async(path: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _exchange_sync(path: str, request: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker answered (a refusal) and hung up before reading: its line is still there
        reply = b""
        while not reply.endswith(b"\n"):
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


# -- starting and finding runs -------------------------------------------------


def start_run_sync(config: RunConfig, home: Path | None = None, warm: WarmWorker | None = None) -> RunHandle:
    """Create a run directory for ``config`` and start its worker.

    Args:
        config: the validated run config (written to config.toml).
        home: the convdeck home (``$CONVDECK_HOME`` when None).
        warm: a warm worker to hand the run to (:mod:`engine.run.warm`);
            one that cannot take it (used, gone, stale) is passed over for a
            cold start.

    Returns:
        A handle holding the worker process.
    """
    preflight(config)
    run_dir = create_run_dir(config, home)
    handle = warm.hand_off(run_dir) if warm is not None else None
    return handle if handle is not None else _spawn(run_dir)


def preflight(config: RunConfig) -> None:
    """Catch, before a run directory exists, the mistakes found without TensorFlow.

    The worker checks everything again; this only saves a user the wait for
    TensorFlow to load, and the runs list a failed run, for the common ones.

    Raises:
        ConfigError: the images are smaller than the architecture accepts, or
            the dataset cannot load (:func:`engine.datasets.checks.check_dataset`).
    """
    from engine.datasets.checks import check_dataset
    from engine.models import min_input_size

    minimum = min_input_size(config.model)
    height, width = config.data.image_size
    if min(height, width) < minimum:
        suggestion = [max(height, minimum), max(width, minimum)]
        raise ConfigError(
            f"model.arch {config.model.arch!r} needs images of at least {minimum}x{minimum}; "
            f"got {height}x{width} (set data.image_size = {suggestion})"
        )
    check_dataset(config.data)


async def start_run(config: RunConfig, home: Path | None = None, warm: WarmWorker | None = None) -> RunHandle:
    """:func:`start_run_sync` for async callers, in a thread: the worker answers only once it
    has imported enough to take the run's lock (a fraction of a second, longer on a busy machine).
    """
    return await asyncio.to_thread(start_run_sync, config, home, warm)


def resume_run_sync(
    handle_or_ref: RunHandle | str,
    remedy: str | None = None,
    home: Path | None = None,
    force: bool = False,
    from_scratch: bool = False,
) -> RunHandle:
    """Start a worker that continues a stopped, failed or crashed run from its newest intact checkpoint.

    Args:
        handle_or_ref: a handle, or a run id or unique prefix of one.
        remedy: a remedy to apply before continuing (a name in :data:`engine.remedies.REMEDIES`).
        home: the convdeck home, for a ref.
        force: end a hung worker first (one that holds the run but stopped
            touching its heartbeat); a working one is never ended.
        from_scratch: start again from step 0 (same config, same record);
            the worker moves what ``checkpoints/`` held aside.

    Raises:
        AlreadyRunning: a worker owns the run (checked here, and again by the
            worker itself, which is what makes two racing resumes start one).
        ConfigError: the run matches nothing, finished, is hung (without
            ``force``), its config is unreadable, it has nothing left to resume
            from (and not ``from_scratch``), its directory is not writable, or
            the remedy is unknown.
    """
    if isinstance(handle_or_ref, RunHandle):
        handle = handle_or_ref
    else:
        handle = find_run(handle_or_ref, home)
    if remedy is not None:
        check_remedy(remedy)
    _check_resumable(handle, force)
    if not from_scratch:
        # The worker reads the checkpoints; no files at all is told here, without TensorFlow's wait.
        check_something_to_resume(handle.run_dir)
    _check_writable(handle.run_dir)
    return _spawn(handle.run_dir, resume=True, remedy=remedy, from_scratch=from_scratch)


async def resume_run(
    handle_or_ref: RunHandle | str,
    remedy: str | None = None,
    home: Path | None = None,
    force: bool = False,
    from_scratch: bool = False,
) -> RunHandle:
    """:func:`resume_run_sync` for async callers, in a thread (see :func:`start_run`)."""
    return await asyncio.to_thread(resume_run_sync, handle_or_ref, remedy, home, force, from_scratch)


def _check_resumable(handle: RunHandle, force: bool = False) -> None:
    summary = handle.summary()
    if summary.status == "finished":
        raise ConfigError(
            f"run {handle.run_id} finished; nothing to resume (start a new one with `convdeck run`)"
        )
    handle.config()  # an unreadable config fails here, in one line, not in the worker
    liveness = worker_liveness(handle.run_dir)
    if liveness.pid is None:
        return
    if liveness.hung and force:
        _end_hung_worker(handle, liveness.pid)
    elif liveness.hung:
        minutes = heartbeat_stale_seconds() / 60
        raise ConfigError(
            f"run {handle.run_id} is hung: its worker (pid {liveness.pid}) holds the run but has not "
            f"touched its heartbeat for over {minutes:g} min; end it and resume with "
            f"`convdeck resume {handle.run_id} --force`"
        )
    elif summary.status in LIVE_STATUSES or not _let_go_after_final_event(handle):
        raise AlreadyRunning(handle.run_id, liveness.pid)


def _let_go_after_final_event(handle: RunHandle) -> bool:
    """A worker past its final event (stopped, failed) is exiting: wait for it to let go."""
    return lock.wait_free(handle.run_dir / LOCK_FILE, EXITING_WORKER_WAIT_SECONDS)


def _end_hung_worker(handle: RunHandle, pid: int) -> None:
    """SIGKILL the hung worker (a stopped or stuck one would not act on SIGTERM) and wait
    for the run's lock to come free. The process is the one worker.pid names with the
    start time recorded there, so a reused pid is never signalled.
    """
    import psutil

    process = recorded_worker(handle.run_dir)
    if process is not None and process.pid == pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()  # psutil checks the start time again before it signals
    if not lock.wait_free(handle.run_dir / LOCK_FILE, FORCE_WAIT_SECONDS):
        raise ConfigError(
            f"run {handle.run_id}: the hung worker (pid {pid}) still holds the run "
            f"{FORCE_WAIT_SECONDS:g} s after SIGKILL; see `fuser -v {handle.run_dir / LOCK_FILE}`"
        )


def _check_writable(run_dir: Path) -> None:
    """The worker writes its log, events and checkpoints here: say so now if it cannot.

    ``os.access`` answers for the real user and sees a read-only mount, so
    root on a read-only filesystem is refused too.
    """
    paths = [run_dir, run_dir / CHECKPOINTS_DIR, run_dir / EVENTS_FILE, run_dir / WORKER_LOG]
    for path in paths:
        wanted = os.W_OK | (os.X_OK if path.is_dir() else 0)
        if path.exists() and not os.access(path, wanted):
            raise ConfigError(
                f"cannot resume run {run_dir.name}: {path} is not writable (the worker writes "
                "its events, checkpoints and log in the run directory); make it writable"
            )


def find_run(ref: str | None, home: Path | None = None) -> RunHandle:
    """The run named by ``ref`` (an id or a unique prefix), or the newest live run.

    Raises:
        ConfigError: nothing or several runs match, or (ref None) no run is live.
    """
    return RunHandle(find_run_dir(ref, home))


def list_runs(home: Path | None = None) -> list[RunFacts]:
    """A summary of every run, oldest first (:func:`engine.run.store.list_runs`)."""
    return [_with_preset_name(summary) for summary in _list_runs(home)]


def _with_preset_name(summary: RunFacts) -> RunFacts:
    """Before its worker has written ``run_started``, a run's preset and model are in config.toml."""
    if not summary.config:
        with contextlib.suppress(Exception):
            from engine.config import load_toml

            config = load_toml(summary.run_dir / CONFIG_FILE)
            config.pop("revisions", None)
            summary.config = config
            summary.preset = str(config.get("name", summary.preset))
    return summary


def start_worker(run_dir: Path, env: dict[str, str] | None = None) -> RunHandle:
    """Start the worker of a run directory made beforehand (the queue's runs), with extra ``env``.

    Raises:
        AlreadyRunning: a worker owns the run already.
    """
    return _spawn(run_dir, env=env)


def _spawn(
    run_dir: Path,
    resume: bool = False,
    remedy: str | None = None,
    from_scratch: bool = False,
    env: dict[str, str] | None = None,
) -> RunHandle:
    """Start the worker detached, under its supervisor (:mod:`engine.run.supervisor`).

    The supervisor runs ``python -m engine.train.worker RUN_DIR`` as its child in a
    session of its own, then waits to tell how the worker ended (a death by
    signal becomes a ``worker_exit`` event). The worker takes the run's lock,
    records its pid in worker.pid, and answers here on a pipe: its pid, or
    that another worker owns the run.

    Raises:
        AlreadyRunning: the worker found the run owned and exited, writing nothing.
    """
    worker_args = ["--resume"] if resume else []
    worker_args += ["--remedy", remedy] if remedy else []
    worker_args += ["--from-scratch"] if from_scratch else []
    spawn_offset = events_size(run_dir)
    read_fd, write_fd = os.pipe()
    try:
        with open(run_dir / WORKER_LOG, "ab") as log:
            supervisor = subprocess.Popen(
                supervisor_command(write_fd, str(run_dir), *worker_args),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                pass_fds=(write_fd,),
                env=spawn_env(env),
            )
        os.close(write_fd)
        write_fd = -1
        answer = read_worker_answer(read_fd, supervisor)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    return handle_from_answer(run_dir, supervisor, answer, worker_args, spawn_offset)


def spawn_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a supervisor and its worker start with: this one, ``extra``, unbuffered output."""
    # Unbuffered, so worker.log shows a crash's last words.
    return {**os.environ, **(extra or {}), "PYTHONUNBUFFERED": "1"}


def supervisor_command(report_fd: int, *args: str) -> list[str]:
    """``python -m engine.run.supervisor`` with the worker module, the report pipe and ``args``."""
    return [
        sys.executable,
        "-m",
        "engine.run.supervisor",
        "--worker-module",
        _worker_module(),
        "--report-fd",
        str(report_fd),
        *args,
    ]


def events_size(run_dir: Path) -> int:
    """How much of events.jsonl earlier workers wrote: a new worker's events start there."""
    events_path = run_dir / EVENTS_FILE
    return events_path.stat().st_size if events_path.exists() else 0


def handle_from_answer(
    run_dir: Path, supervisor: subprocess.Popen, answer: list[str], worker_args: list[str], spawn_offset: int
) -> RunHandle:
    """The handle of a worker that answered ``answer`` (:func:`read_worker_answer`).

    Raises:
        AlreadyRunning: it found the run owned and exited, writing nothing.
    """
    if answer[:1] == ["busy"]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(SUPERVISOR_REPORT_SECONDS)  # it leaves with its worker, at once
        raise AlreadyRunning(run_dir.name, _pid_or_none(answer[1:]))
    worker_pid = _pid_or_none(answer)
    worker_command = [sys.executable, "-m", _worker_module(), str(run_dir), *worker_args]
    process = SupervisedWorker(supervisor, worker_pid, worker_command)
    return RunHandle(run_dir, process=process, spawn_offset=spawn_offset)


class SupervisedWorker:
    """A worker started under a supervisor, as much like its ``Popen`` as callers need.

    ``pid`` is the worker's (what worker.pid names); ``poll``, ``wait`` and
    ``returncode`` are the supervisor's, which ends when the worker does, with
    the worker's exit code or by the worker's signal.
    """

    def __init__(
        self, supervisor: subprocess.Popen, worker_pid: int | None, args: list[str]
    ) -> None:
        self.supervisor = supervisor
        # Without a reported pid (the supervisor died first) the supervisor stands in.
        self.pid = worker_pid if worker_pid is not None else supervisor.pid
        self.args = args

    def poll(self) -> int | None:
        return self.supervisor.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.supervisor.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.supervisor.returncode


def read_worker_answer(
    fd: int, supervisor: subprocess.Popen, timeout: float = SUPERVISOR_REPORT_SECONDS
) -> list[str]:
    """The worker's answer, as words: ``[PID]`` once it owns the run, ``["busy", PID]``
    when another worker does, ``[]`` if none comes (it died before it could tell).
    """
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            if supervisor.poll() is not None:
                return []
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            break  # closed without an answer: the worker died before it could tell
        data += chunk
    return data.decode(errors="replace").split()


def _pid_or_none(words: list[str]) -> int | None:
    return int(words[0]) if words and words[0].isdigit() else None


def _worker_module() -> str:
    """``engine.train.worker``; tests swap in a fake, TF-free worker through the environment."""
    return os.environ.get("CONVDECK_WORKER_MODULE") or "engine.train.worker"
