"""The queue runner: ``python -m engine.run.queue_runner``, a detached process that works the queue.

Each tick it (1) follows the runs it started: an ended run ends its entry,
a sweep trial's validations go to its study (which may prune it); (2) fills
free slots: one run per GPU with at least ``[queue] min_free_gib`` free (by
NVML), the run's GPUs given by ``CUDA_VISIBLE_DEVICES``; without a GPU, one
run at a time; (3) keeps each of its sweeps one trial ahead in the queue.

One runner a home: it holds ``queue.lock`` (flock) for its life, so a
second one exits at once. Killed at any moment, it loses nothing: the queue
file's states (engine.run.queue) let the next runner finish a half-done
start, and the runs it started are workers of their own that keep going and
are adopted. It leaves when nothing is queued, running or being swept.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.gpu import GIB, GpuSample
from engine.remedies import UNATTENDED_REMEDY
from engine.run.facts import PRUNED_REASON
from engine.run.lock import AlreadyRunning
from engine.run.queue import CLAIMED, ENDED, LAUNCHED, Entry, RunQueue
from engine.run.store import convdeck_home, runs_root

RUNNER_LOCK_FILE = "queue.lock"
RUNNER_LOG_FILE = "queue.log"
TICK_SECONDS = 1.0
# With nothing queued, running or swept, the runner waits this long for new work, then leaves.
IDLE_EXIT_SECONDS = 30.0
DEFAULT_MIN_FREE_GIB = 2.0
ENDED_STATUSES = ("finished", "stopped", "failed", "crashed", "pruned")


@dataclass
class Slots:
    """Where the next runs can go: GPU indices free for them, or CPU runs allowed."""

    gpus: list[int] = field(default_factory=list)
    cpu: int = 0


def plan_slots(sample: GpuSample, busy_gpus: set[int], live_runs: int, min_free_gib: float) -> Slots:
    """Which devices can take a new run now.

    A GPU is free when no queue run holds it and NVML shows ``min_free_gib``
    free on it (another user's process counts). Without NVML or any GPU,
    one run at a time on the CPU.
    """
    if sample.unavailable or not sample.devices:
        return Slots(cpu=0 if live_runs else 1)
    free = [
        d.index
        for d in sample.devices
        if d.index not in busy_gpus and d.memory_total - d.memory_used >= min_free_gib * GIB
    ]
    return Slots(gpus=free)


def runner_lock(home: Path) -> int | None:
    """Take the home's runner lock; the fd holding it, or None when another runner has it."""
    path = home / RUNNER_LOCK_FILE
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def runner_pid(home: Path | None = None) -> int | None:
    """The pid of the runner working this home's queue, or None when there is none."""
    path = (home or convdeck_home()) / RUNNER_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return -1  # held, pid not written yet
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class QueueRunner:
    """One tick at a time: follow started runs, start new ones, feed sweeps.

    Args:
        home: the convdeck home.
        gpu_sample: reads the GPUs (NVML; tests give recorded samples).
        log: where the runner's lines go (queue.log).
    """

    def __init__(self, home: Path, gpu_sample: Callable[[], GpuSample], log: Callable[[str], None]) -> None:
        self.home = home
        self.queue = RunQueue(home)
        self.gpu_sample = gpu_sample
        self.log = log
        self._tails: dict = {}  # entry id -> the EventTail of its run's events (sweep trials)
        self._best: dict[int, float] = {}  # entry id -> the best value of its sweep's metric so far
        self._was_busy = False

    # -- one tick ---------------------------------------------------------------------

    def tick(self) -> bool:
        """Do one round; True while there is anything left to do."""
        live = self._follow_started()
        if not self.queue.paused():
            self._feed_sweeps()
            self._fill(live)
        busy = bool(self.queue.entries(include_ended=False)) or self._active_sweeps()
        if self._was_busy and not busy:
            self._notify_queue_empty()
        self._was_busy = busy
        return busy

    def _follow_started(self) -> list[Entry]:
        """Finish half-done starts, end entries whose runs ended; the entries still running."""
        live = []
        for entry in self.queue.started():
            if entry.state == CLAIMED:
                self._launch(entry)
                entry = self.queue.get(entry.id)
                if entry.state == ENDED:
                    continue
            status = self._status(entry)
            if status in ENDED_STATUSES:
                self._end(entry, status)
            else:
                live.append(entry)
                self._report_to_sweep(entry)
        return live

    def _fill(self, live: list[Entry]) -> None:
        busy_gpus = {int(g) for e in live for g in _devices_of(e)}
        slots = plan_slots(self.gpu_sample(), busy_gpus, len(live), self._min_free_gib())
        while slots.cpu > 0 or slots.gpus:
            width = len(slots.gpus) if slots.gpus else None
            entry = self.queue.claim_next(self._run_id_for, max_gpus=width)
            if entry is None:
                return
            devices = slots.gpus[: entry.gpus] if slots.gpus else []
            slots.gpus = slots.gpus[len(devices):]
            slots.cpu -= 0 if devices else 1
            self.queue.set_devices(entry.id, devices)
            self._launch(self.queue.get(entry.id))

    # -- starting a run ---------------------------------------------------------------

    def _run_id_for(self, entry: Entry) -> str:
        from engine.run.store import new_run_id

        return new_run_id(entry.preset)

    def _launch(self, entry: Entry) -> None:
        """Start the entry's worker (again, after a runner died mid-start: the run's lock keeps it one)."""
        from engine.run import client

        run_dir = runs_root(self.home) / entry.run_id
        try:
            if not (run_dir / "config.toml").exists():
                config = self._config_of(entry)
                client.preflight(config)
                from engine.run.store import create_run_dir

                create_run_dir(config, self.home, run_id=entry.run_id)
            if client.RunHandle(run_dir).pid() is None and not _ever_started(run_dir):
                devices = ",".join(map(str, _devices_of(entry)))
                client.start_worker(run_dir, env={"CUDA_VISIBLE_DEVICES": devices} if devices else None)
        except AlreadyRunning:
            pass  # a runner before us started it after all: the run's lock kept it one worker
        except ConfigError as error:
            self.log(f"entry {entry.id} ({entry.preset}): {error}")
            self.queue.mark(entry.id, ENDED, outcome="failed", note=str(error))
            self._tell_sweep(entry, "failed")
            return
        self.queue.mark(entry.id, LAUNCHED)
        self.log(f"entry {entry.id} started as run {entry.run_id}")
        if entry.sweep is not None:
            self._sweep(entry.sweep).set_run(entry.trial, entry.run_id)

    def _config_of(self, entry: Entry):
        from engine.presets import load_preset

        config = load_preset(entry.preset, entry.overrides, self.home)
        if config.train.on_oom == "ask":
            config.train.on_oom = UNATTENDED_REMEDY
            self.queue.mark(entry.id, CLAIMED, note=f"on_oom ask -> {UNATTENDED_REMEDY}: nobody answers in a queue")
        return config

    # -- runs ending ------------------------------------------------------------------

    def _status(self, entry: Entry) -> str:
        from engine.run.store import summarize_run

        run_dir = runs_root(self.home) / entry.run_id
        return summarize_run(run_dir).status if run_dir.exists() else "crashed"

    def _end(self, entry: Entry, status: str) -> None:
        self.queue.mark(entry.id, ENDED, outcome=status)
        self.log(f"entry {entry.id} ended: run {entry.run_id} {status}")
        self._tell_sweep(entry, status)

    # -- sweeps -----------------------------------------------------------------------

    def _sweep(self, name: str):
        from engine.run.sweep import Sweep

        storage = self.queue.sweep_storage(name)
        return Sweep(name, storage, self.home)

    def _active_sweeps(self) -> list[str]:
        return [name for name, _ in self.queue.sweeps() if not self._sweep(name).done()]

    def _feed_sweeps(self) -> None:
        """Keep one trial of each sweep waiting in the queue while it has trials left."""
        for name, _ in self.queue.sweeps():
            waiting = [e for e in self.queue.entries(include_ended=False) if e.sweep == name and e.state == "queued"]
            if waiting:
                continue
            sweep = self._sweep(name)
            trial = sweep.next_trial()
            if trial is not None:
                number, overrides = trial
                note = f"sweep {name} trial {number}"
                self.queue.add(sweep.spec.preset, overrides, sweep=name, trial=number, note=note)

    def _report_to_sweep(self, entry: Entry) -> None:
        """Hand the trial's new validations to its study; stop the run (reason pruned) when told to."""
        if entry.sweep is None:
            return
        sweep = self._sweep(entry.sweep)
        for epoch, value in self._new_validations(entry, sweep.spec.metric):
            if sweep.report(entry.trial, epoch, value):
                self.log(f"sweep {entry.sweep}: pruning trial {entry.trial} (run {entry.run_id})")
                from engine.run import client

                client.RunHandle(runs_root(self.home) / entry.run_id).command_sync("stop", name=PRUNED_REASON)
                return

    def _new_validations(self, entry: Entry, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of the ``epoch_end`` events the run wrote since the last tick."""
        from engine.run.events import EVENTS_FILE, EventTail
        from engine.run.protocol import EpochEnd

        tail = self._tails.setdefault(entry.id, EventTail(runs_root(self.home) / entry.run_id / EVENTS_FILE))
        found = []
        for event in tail.read_new():
            value = getattr(event, metric, None) if isinstance(event, EpochEnd) else None
            if value is not None and event.epoch is not None:
                found.append((event.epoch, float(value)))
                best = self._best.get(entry.id)
                better = max if metric == "val_accuracy" else min
                self._best[entry.id] = float(value) if best is None else better(best, float(value))
        return found

    def _tell_sweep(self, entry: Entry, status: str) -> None:
        if entry.sweep is None:
            return
        sweep = self._sweep(entry.sweep)
        if entry.run_id:
            self._new_validations(entry, sweep.spec.metric)  # the last epochs, written as it ended
        sweep.finish(entry.trial, status, self._best.get(entry.id))
        if sweep.done():
            self._notify("sweep_done", f"sweep {entry.sweep} done", _sweep_summary(sweep))

    # -- settings and alerts ----------------------------------------------------------

    def _min_free_gib(self) -> float:
        from engine.run.settings import user_settings

        return float(user_settings(self.home).get("queue", {}).get("min_free_gib", DEFAULT_MIN_FREE_GIB))

    def _notify_queue_empty(self) -> None:
        ended = [e for e in self.queue.entries() if e.state == ENDED]
        outcomes = ", ".join(f"{e.run_id or e.preset} {e.outcome}" for e in ended[-10:])
        self._notify("queue_empty", "convdeck queue is empty", f"last runs: {outcomes}")

    def _notify(self, kind: str, title: str, body: str) -> None:
        from engine.run.notify import Notifier, load_settings

        try:
            notifier = Notifier(load_settings(self.home), on_failure=self.log)
        except ConfigError as error:
            self.log(f"alerts off: {error}")
            return
        notifier.send(kind, title, body)
        notifier.wait()


def _ever_started(run_dir: Path) -> bool:
    """A worker took the run at some point (a runner died before it could record the launch)."""
    from engine.run.events import EVENTS_FILE

    try:
        return (run_dir / EVENTS_FILE).stat().st_size > 0
    except FileNotFoundError:
        return False


def _devices_of(entry: Entry) -> list[int]:
    return [int(d) for d in entry.devices.split(",") if d] if entry.devices else []


def _sweep_summary(sweep) -> str:
    best = sweep.best()
    if best is None:
        return "no trial finished"
    settings = ", ".join(f"{k}={v}" for k, v in best.params.items())
    run = best.user_attrs.get("run_id")
    return f"best trial {best.number}: {sweep.spec.metric} {best.value:.4f} ({settings}), run {run}"


def start_runner(home: Path | None = None) -> int | None:
    """Start a detached runner for ``home`` unless one works it already; the runner's pid.

    Like a worker it runs in a session of its own, so closing the terminal or
    the ssh link that started it does not end it.
    """
    import subprocess

    home = home or convdeck_home()
    running = runner_pid(home)
    if running is not None:
        return running
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home / RUNNER_LOG_FILE, "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.run.queue_runner", "--home", str(home)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    return process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.run.queue_runner")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT_SECONDS)
    args = parser.parse_args(argv)
    home = args.home or convdeck_home()
    lock = runner_lock(home)
    if lock is None:
        print(f"a queue runner already works {home} (pid {runner_pid(home)})", file=sys.stderr)
        return 0
    log_path = home / RUNNER_LOG_FILE

    def log(line: str) -> None:
        with open(log_path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    from engine.gpu import NvmlSource

    nvml = NvmlSource()
    runner = QueueRunner(home, nvml.sample, log)
    log(f"runner {os.getpid()} working the queue")
    idle_since = None
    while True:
        try:
            busy = runner.tick()
        except ConfigError as error:
            log(f"queue: {error}")
            busy = True
        now = time.monotonic()
        idle_since = None if busy else (idle_since or now)
        if idle_since is not None and now - idle_since >= args.idle_exit:
            log(f"runner {os.getpid()} leaving: nothing queued, running or swept")
            return 0
        time.sleep(TICK_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
