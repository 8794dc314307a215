"""The supervisor: a tiny parent that reports how its worker died.

``python -m engine.run.supervisor [--worker-module M] [--report-fd FD] RUN_DIR [WORKER ARGS...]``
``python -m engine.run.supervisor --warm [--worker-module M] [--report-fd FD]``

A worker killed by a signal writes no last event: the kernel's OOM killer
sends SIGKILL, a CUDA or native fault raises SIGSEGV. Only its parent learns
how it ended, so the client starts this process (detached, TF-free, a few
MB) and it runs the worker as its child (in a session of its own, as
before). Every second it samples the worker's resident memory and the host's
available memory (and the cgroup's, where one limits it). When the worker
dies by a signal, or exits non-zero without a final event, it appends a
``worker_exit`` event: the signal, the return code, whether host memory ran
low, and what to do next. The run's status stays ``crashed``; its reason
now says why.

- The worker, not the supervisor, owns the run: it takes the run's lock
  (:mod:`engine.run.lock`) before anything else, then writes ``worker.pid``,
  then answers the client on the ``--report-fd`` pipe, which the supervisor
  hands down to it (:data:`engine.run.lock.STARTED_FD_ENV`): its pid, or
  ``busy PID`` when another worker owns the run. Such a worker exits with
  :data:`engine.run.lock.EXIT_ALREADY_RUNNING` having written nothing, and
  the supervisor then reports nothing either.
- The supervisor appends ``worker_exit`` only while it holds the run's lock
  (its worker is dead by then, so the lock is free unless a newer worker
  took the run, whose events must not be followed by an old death).
- The worker's exec-restart (after a remedy) keeps its pid and its lock, so
  the supervisor keeps waiting on the same child.
- SIGHUP is ignored; SIGTERM and SIGINT are forwarded to the worker, which
  treats them as ``stop``.
- The supervisor exits with the worker: with its exit code, or by the same
  signal (core dumps off), so whoever waits on it sees what the worker did.
- ``--warm``: the pair starts before its run is known, the worker loading
  TensorFlow meanwhile; one line on stdin hands it the run, and from then on
  all is as above (:mod:`engine.run.warm_protocol`). End of file instead
  ends both, quietly.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.run.events import EVENTS_FILE, EventWriter, parse_line
from engine.run.lock import EXIT_ALREADY_RUNNING, STARTED_FD_ENV, RunLock
from engine.run.store import LOCK_FILE, WORKER_LOG, Liveness, worker_liveness
from engine.run.warm_protocol import WARM_FLAG, HandOff, redirect_output, wait_for_line

SAMPLE_SECONDS = 1.0
RECENT_SAMPLES = 5  # how far back "memory ran low just before it died" looks
# Host (or cgroup) memory counts as nearly exhausted below this share of the total...
LOW_MEMORY_FRACTION = 0.08
# ...or below this many bytes, whichever is larger.
LOW_MEMORY_BYTES = 512 << 20
# The worker alone holding this share of the memory is a likely OOM-killer victim too.
WORKER_SHARE_FRACTION = 0.7
NATIVE_FAULTS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class Sample:
    """One look at the worker and the host, in bytes."""

    time: float
    worker_rss: int
    available: int
    total: int


def read_sample(pid: int) -> Sample:
    """The worker's resident memory (with its children) and the memory left to it."""
    rss = 0
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        rss = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                rss += child.memory_info().rss
    memory = psutil.virtual_memory()
    available, total = memory.available, memory.total
    limit = cgroup_memory()
    if limit is not None:
        usage, cap = limit
        available, total = min(available, max(0, cap - usage)), min(total, cap)
    return Sample(time.time(), rss, available, total)


def cgroup_memory() -> tuple[int, int] | None:
    """``(usage, limit)`` of this process's memory cgroup when a limit is set, else None."""
    for usage_file, limit_file in (
        ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.max"),  # v2
        (
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ),  # v1
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
                return None
            return int(Path(usage_file).read_text().strip()), int(limit_text)
        except (OSError, ValueError):
            continue
    return None


def cgroup_oom_kills() -> int | None:
    """How many processes the cgroup's OOM killer has killed so far (None: unknown)."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            for line in Path(path).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def diagnose(
    returncode: int,
    samples: list[Sample],
    oom_kills: int | None = None,
    run_id: str = "RUN",
) -> dict:
    """The ``worker_exit`` event's fields for a worker that ended with ``returncode``.

    Args:
        returncode: as subprocess reports it: negative for a signal.
        samples: the last samples before it died, oldest first.
        oom_kills: how many OOM kills the cgroup counted while it ran (None: unknown).
        run_id: the run, for the command the suggestion gives.
    """
    recent = samples[-RECENT_SAMPLES:]
    low = False
    if recent:
        total = recent[-1].total
        floor = max(LOW_MEMORY_BYTES, LOW_MEMORY_FRACTION * total)
        low = min(s.available for s in recent) < floor or (
            recent[-1].worker_rss >= WORKER_SHARE_FRACTION * total
        )
    low = low or bool(oom_kills)
    name = signal_name(-returncode) if returncode < 0 else None
    suggestion = _suggestion(name, returncode, low, run_id)
    how = f"killed by {name}" if name else f"exited with code {returncode} without a final event"
    fields = {
        "returncode": returncode,
        "signal": name,
        "signal_number": -returncode if returncode < 0 else None,
        "host_memory_low": low,
        "suggestion": suggestion,
        "message": f"{how}: {suggestion}",
    }
    if recent:
        fields.update(
            worker_rss_bytes=recent[-1].worker_rss,
            worker_peak_rss_bytes=max(s.worker_rss for s in samples),
            host_available_bytes=min(s.available for s in recent),
            host_total_bytes=recent[-1].total,
        )
    if oom_kills is not None:
        fields["oom_kills"] = oom_kills
    return fields


def _suggestion(name: str | None, returncode: int, low: bool, run_id: str) -> str:
    resume = f"`convdeck resume {run_id}`"
    if name == "SIGKILL" and low:
        return (
            "the kernel's OOM killer likely ended it: host memory ran out; "
            f"resume with `convdeck resume {run_id} --remedy halve-batch`"
        )
    if name == "SIGKILL":
        return (
            "something outside ended it (a user, a job scheduler, or a memory limit); "
            f"host memory was not low when last sampled; resume with {resume}"
        )
    if name in NATIVE_FAULTS:
        return (
            "a CUDA or native fault (TensorFlow, a driver or a library crashed); "
            f"resume with {resume}, and if it happens again see worker.log"
        )
    if name == "SIGABRT":
        return (
            "an abort inside TensorFlow or CUDA (a failed check); see worker.log; "
            f"resume with {resume}"
        )
    if low:
        return (
            f"host memory was nearly exhausted; resume with "
            f"`convdeck resume {run_id} --remedy halve-batch`"
        )
    if name:
        return f"it ended before it could save; resume with {resume}"
    return f"see worker.log for why; resume with {resume}"


class Supervisor:
    """Runs one worker to its end, sampling it, and reports a death by signal.

    Args:
        run_dir: the run; None for a warm pair until :meth:`take_run`.
        command: the worker's command line.
        report_fd: the pipe the worker answers the client on.
    """

    def __init__(self, run_dir: Path | None, command: list[str], report_fd: int | None = None) -> None:
        self.command = command
        self.report_fd = report_fd  # handed to the worker, which answers the client on it
        self.samples: collections.deque[Sample] = collections.deque(maxlen=RECENT_SAMPLES)
        self.peak_rss = 0
        self.alerts = None  # engine.run.alerts.RunAlerts when the run has alert URLs
        self.child: subprocess.Popen | None = None
        self.pending: list[int] = []  # signals that came before the worker started
        if run_dir is not None:
            self.take_run(run_dir)

    def take_run(self, run_dir: Path) -> None:
        """Watch ``run_dir`` from now on: what its events file and the cgroup hold are the past."""
        self.run_dir = run_dir
        events = run_dir / EVENTS_FILE
        self.events_offset = events.stat().st_size if events.exists() else 0
        self.oom_kills_before = cgroup_oom_kills()

    def start(self, stdin: int = subprocess.DEVNULL) -> int:
        """Start the worker (a session of its own); returns its pid.

        The worker records its own pid once it holds the run's lock: written
        here, a worker that then finds the run owned would leave its dead pid.

        Args:
            stdin: the worker's stdin: a warm worker reads its run there (``subprocess.PIPE``).
        """
        env, pass_fds = None, ()
        if self.report_fd is not None:
            env, pass_fds = {**os.environ, STARTED_FD_ENV: str(self.report_fd)}, (self.report_fd,)
        try:
            self.child = subprocess.Popen(
                self.command,
                stdin=stdin,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
                env=env,
            )
        finally:
            if self.report_fd is not None:
                # Only the worker answers now; if it dies first, the client reads EOF.
                with contextlib.suppress(OSError):
                    os.close(self.report_fd)
        for number in self.pending:
            self.forward(number)
        return self.child.pid

    def forward(self, number: int, _frame: object = None) -> None:
        """Pass SIGTERM or SIGINT on to the worker (it checkpoints and stops)."""
        if self.child is None:
            self.pending.append(number)
        elif self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, number)

    def wait(self) -> int:
        """Sample every second until the worker ends; returns its return code."""
        assert self.child is not None
        pidfd = _pidfd(self.child.pid)
        try:
            while self.child.poll() is None:
                if not self.sample():
                    break
                self._poll_alerts()
                _wait_readable(pidfd, self.child, SAMPLE_SECONDS)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return self.child.wait()

    def sample(self) -> bool:
        """Record the worker's and the host's memory now; False when the worker is gone."""
        assert self.child is not None
        sample = read_sample(self.child.pid)
        if self.child.poll() is not None:
            return False  # it died while we looked: this sample shows the aftermath
        self.samples.append(sample)
        self.peak_rss = max(self.peak_rss, sample.worker_rss)
        return True

    def _poll_alerts(self) -> None:
        if self.alerts is None:
            return
        liveness = worker_liveness(self.run_dir)
        if liveness.pid is None:
            return  # not started yet, or just died: final_alerts says crashed, with the signal, after report
        try:
            self.alerts.poll(liveness)
        except Exception as error:  # noqa: BLE001 - an alert must never take the run's watcher down
            print(f"supervisor: alerts: {type(error).__name__}: {error}", file=sys.stderr)
            self.alerts = None

    def final_alerts(self) -> None:
        """After the worker ended (and its exit was reported): the last alert, then time to send it."""
        if self.alerts is None:
            return
        self.alerts.poll(Liveness())
        self.alerts.wait()

    def report(self, returncode: int) -> dict | None:
        """Append ``worker_exit`` when the worker died by a signal or without a final event."""
        if returncode == EXIT_ALREADY_RUNNING:
            return None  # it never owned the run; the owner's record is not ours to touch
        final = self._ended_with_final_event()
        if returncode == 0 or (returncode > 0 and final):
            return None
        kills = cgroup_oom_kills()
        new_kills = None
        if kills is not None and self.oom_kills_before is not None:
            new_kills = kills - self.oom_kills_before
        samples = list(self.samples)
        fields = diagnose(returncode, samples, new_kills, run_id=self.run_dir.name)
        if samples:
            fields["worker_peak_rss_bytes"] = max(self.peak_rss, fields["worker_peak_rss_bytes"])
        assert self.child is not None
        run_lock = RunLock.claim(self.run_dir / LOCK_FILE)
        if run_lock is None:
            print("supervisor: a newer worker owns the run; its worker_exit is not written", file=sys.stderr)
            return None
        try:
            with EventWriter(self.run_dir / EVENTS_FILE) as writer:
                return writer.emit("worker_exit", pid=self.child.pid, final_event=final, **fields)
        finally:
            run_lock.release()

    def _ended_with_final_event(self) -> bool:
        """Whether the worker's last start was followed by ``finished`` or ``failed``."""
        final = False
        try:
            with open(self.run_dir / EVENTS_FILE, "rb") as handle:
                handle.seek(self.events_offset)
                for line in handle:
                    event = parse_line(line)
                    if event is None:
                        continue
                    if event.type in ("finished", "failed"):
                        final = True
                    elif event.type == "run_started":
                        final = False
        except OSError:
            return False
        return final


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel or Python: poll instead


def _wait_readable(pidfd: int | None, child: subprocess.Popen, seconds: float) -> None:
    """Sleep up to ``seconds``, waking at once when the child exits."""
    if pidfd is not None:
        select.select([pidfd], [], [], seconds)
        return
    deadline = time.monotonic() + seconds
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _exit_like(returncode: int) -> None:
    """Leave as the worker did: the same exit code, or the same signal."""
    if returncode >= 0:
        sys.exit(returncode)
    number = -returncode
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the worker's fault, not ours
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        signal.signal(number, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), number)
    os._exit(128 + number)  # a signal whose default is not to end the process


def _run_alerts(run_dir: Path):
    """The run's alerts (engine.run.alerts), or None: none configured, or settings that do not read."""
    from engine.run.alerts import RunAlerts

    def said_once(message: str) -> None:
        print(f"supervisor: {message}", file=sys.stderr)  # worker.log: a failed send, once

    try:
        return RunAlerts.for_run(run_dir, on_failure=said_once)
    except Exception as error:  # noqa: BLE001 - bad settings were refused at the keyboard; never stop a run
        print(f"supervisor: alerts off: {error}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.run.supervisor")
    parser.add_argument("--worker-module", default="engine.train.worker")
    parser.add_argument(
        "--report-fd", type=int, help="handed to the worker, which writes its pid (or busy PID) there"
    )
    parser.add_argument(
        WARM_FLAG, action="store_true", help="no RUN_DIR: wait for one line on stdin that hands the pair its run"
    )
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.warm == (args.run_dir is not None):
        parser.error("give either RUN_DIR or --warm")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.warm:
        supervisor = _warm_start(args.worker_module, args.report_fd)
        if supervisor is None:
            return 0  # no run was handed over: nothing to report, nothing left behind
    else:
        run_dir = args.run_dir.resolve()
        command = [sys.executable, "-m", args.worker_module, str(run_dir), *args.worker_args]
        supervisor = Supervisor(run_dir, command, args.report_fd)
        _forward_stop_signals(supervisor)
        supervisor.start()
    return _supervise(supervisor)


def _forward_stop_signals(supervisor: Supervisor) -> None:
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, supervisor.forward)


def _warm_start(worker_module: str, report_fd: int | None) -> Supervisor | None:
    """Start a warm worker and wait for the run on stdin; the supervisor of that run, or None.

    SIGTERM before the run comes reaches the warm worker, which dies of it
    (it holds nothing), and so ends this wait too.
    """
    supervisor = Supervisor(None, [sys.executable, "-m", worker_module, WARM_FLAG], report_fd)
    _forward_stop_signals(supervisor)
    supervisor.start(stdin=subprocess.PIPE)
    child = supervisor.child
    assert child is not None and child.stdin is not None
    pidfd = _pidfd(child.pid)
    try:
        line = wait_for_line(sys.stdin.fileno(), child, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    hand_off = _decoded(line)
    if hand_off is not None:
        hand_off = HandOff(hand_off.run_dir.resolve(), hand_off.worker_args)
        try:
            redirect_output(hand_off.run_dir / WORKER_LOG)
        except OSError as error:  # the spawner sees the pair end unused, and starts cold: the same error
            print(f"supervisor: cannot write the run's log: {error}", file=sys.stderr)
            hand_off = None
    if hand_off is None:
        _end_warm_worker(child)
        return None
    supervisor.take_run(hand_off.run_dir)
    with contextlib.suppress(OSError):  # a worker that died meanwhile is reported as any other
        child.stdin.write(hand_off.encode())
        child.stdin.close()
    return supervisor


def _end_warm_worker(child: subprocess.Popen) -> None:
    """End a worker that was never handed a run (SIGTERM kills it outright until then)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        child.stdin.close()
    child.wait()


def _decoded(line: bytes | None) -> HandOff | None:
    if line is None:
        return None
    try:
        return HandOff.decode(line)
    except (ValueError, KeyError, TypeError) as error:
        print(f"supervisor: not a hand-off ({error}); the warm pair ends", file=sys.stderr)
        return None


def _supervise(supervisor: Supervisor) -> int:
    """Wait for the worker, report its end, send the last alerts, and leave as it did."""
    # A first sample before the alerts load (Apprise's import takes a while on a busy
    # machine): a worker that dies meanwhile is still reported with its memory.
    supervisor.sample()
    supervisor.alerts = _run_alerts(supervisor.run_dir)
    returncode = supervisor.wait()
    try:
        supervisor.report(returncode)
    except Exception as error:  # noqa: BLE001 - a failed report must not hide the exit
        print(f"supervisor: could not report the worker's exit: {error}", file=sys.stderr)
    if returncode != EXIT_ALREADY_RUNNING:
        supervisor.final_alerts()
    _exit_like(returncode)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
