"""The run store: ``$CONVDECK_HOME/runs/<run-id>/`` and each run's status.

TF-free. A run's status comes from its events (folded into
:class:`engine.run.facts.RunFacts`) and from who owns it (:func:`worker_liveness`):
a worker holds the run's lock (``worker.lock``, :mod:`engine.run.lock`) for its
whole life, records its pid in ``worker.pid`` once it holds it, and touches
its heartbeat file every few seconds. A held lock means a live owner; the
heartbeat's age only tells a working owner from a hung one.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError, seconds_from_env
from engine.run import lock
from engine.run.checkpoint_files import CHECKPOINTS_DIR
from engine.run.events import EVENTS_FILE
from engine.run.facts import LIVE_STATUSES, RunFacts, read_facts

if TYPE_CHECKING:
    from engine.config import RunConfig  # read and written lazily: pydantic costs ~0.15 s

CONFIG_FILE = "config.toml"
LOCK_FILE = "worker.lock"
PID_FILE = "worker.pid"
HEARTBEAT_FILE = "heartbeat"
SOCKET_FILE = "control.sock"
WORKER_LOG = "worker.log"
# The worker touches its heartbeat every few seconds; a step can take long
# on a big model, so only a much older heartbeat counts as a hung worker.
HEARTBEAT_STALE_SECONDS = 120.0
HEARTBEAT_STALE_ENV = "CONVDECK_HEARTBEAT_STALE_SECONDS"
"""Overrides :data:`HEARTBEAT_STALE_SECONDS` (tests; a machine whose steps take minutes)."""
# A new owner writes worker.pid a moment after it takes the lock: a reader
# that sees the lock held and an old pid waits this long for the new one.
OWNER_RECORD_WAIT_SECONDS = 1.0



def convdeck_home() -> Path:
    """``$CONVDECK_HOME``, or ``~/.convdeck``."""
    return Path(os.environ.get("CONVDECK_HOME") or Path.home() / ".convdeck").expanduser()


def runs_root(home: Path | None = None) -> Path:
    return (home or convdeck_home()) / "runs"


def new_run_id(preset: str) -> str:
    """A sortable id: UTC time to the second, the preset, and a short random tail."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in preset)[:40]
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def create_run_dir(config: RunConfig, home: Path | None = None, run_id: str | None = None) -> Path:
    """Make a run directory (mode 0700) holding the run's config.toml.

    ``run_id`` names it exactly (the queue records an entry's id before the
    directory exists); by default a fresh id is drawn.

    Raises:
        ConfigError: the runs directory cannot be made or written (one line
            naming it); nothing half-made is left behind.
    """
    root = runs_root(home)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_dir = _new_run_dir(root, config.name, run_id)
    except OSError as error:
        raise _unwritable(root, error) from None
    try:
        os.chmod(run_dir, 0o700)  # mkdir's mode is masked by the umask
        (run_dir / CHECKPOINTS_DIR).mkdir(exist_ok=True)
        write_config(run_dir, config)
    except OSError as error:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run without its config is no run
        raise _unwritable(run_dir, error) from None
    return run_dir


def _new_run_dir(root: Path, preset: str, run_id: str | None = None) -> Path:
    if run_id is not None:
        # The queue's recorded id: made now, or already made by a runner that died after mkdir.
        (root / run_id).mkdir(mode=0o700, exist_ok=True)
        return root / run_id
    run_id = new_run_id(preset)
    for attempt in range(1, 1000):
        run_dir = root / (run_id if attempt == 1 else f"{run_id}{attempt}")
        try:
            run_dir.mkdir(mode=0o700)
            return run_dir
        except FileExistsError:
            continue  # two runs of one preset in the same second drew the same tail
    raise FileExistsError(errno.EEXIST, "no free run id", str(root / run_id))


def _unwritable(directory: Path, error: OSError) -> ConfigError:
    return ConfigError(
        f"cannot create a run in {directory}: {error.strerror or error}; make it writable, "
        "or set CONVDECK_HOME to a directory you can write"
    )


def write_config(run_dir: Path, config: RunConfig, history: list[dict] | None = None) -> None:
    """Write config.toml atomically; earlier revisions are kept as a list of tables."""
    from engine.config import config_to_toml, dump_toml

    text = config_to_toml(config)
    if history:
        text += "\n" + "\n".join(
            dump_toml({"revisions": rev}).replace("[revisions]", "[[revisions]]", 1) for rev in history
        )
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_config(run_dir: Path) -> RunConfig:
    """The run's current config; ConfigError with one line when unreadable, empty or cut short."""
    from engine.config import validate_run_config

    _check_whole_lines(run_dir / CONFIG_FILE)
    data = _load_config_toml(run_dir)
    data.pop("revisions", None)
    return validate_run_config(data, source=str(run_dir / CONFIG_FILE))


def _check_whole_lines(path: Path) -> None:
    """write_config ends every line; a last line without its end was cut (``epochs = 1`` of 10)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return  # empty: validate_run_config says so
            handle.seek(size - 1)
            last = handle.read(1)
    except OSError:
        return  # the read that follows says what is wrong, in one line
    if last != b"\n":
        raise ConfigError(
            f"{path}: cut short: its last line has no end, so its last value may be cut too; "
            "restore the file (or end its last line, if you edited it) to go on"
        )


def read_config_revisions(run_dir: Path) -> list[dict]:
    """Earlier config revisions (each a dict with revision, reason, config changes)."""
    return list(_load_config_toml(run_dir).get("revisions", []))


def _load_config_toml(run_dir: Path) -> dict:
    """config.toml as a dict; binary garbage (not UTF-8) is one line too, not a traceback."""
    from engine.config import load_toml

    path = run_dir / CONFIG_FILE
    try:
        return load_toml(path)
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); "
            "the run's config is unreadable"
        ) from None


def list_run_dirs(home: Path | None = None) -> list[Path]:
    """Every run directory, oldest first (ids sort by time)."""
    root = runs_root(home)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists())


def resolve_run(ref: str, home: Path | None = None) -> Path:
    """The run directory whose id is ``ref`` or starts with it; ConfigError otherwise."""
    runs = list_run_dirs(home)
    exact = [p for p in runs if p.name == ref]
    matches = exact or [p for p in runs if p.name.startswith(ref)]
    if not matches:
        hint = f"; the newest is {runs[-1].name}" if runs else "; there are no runs yet"
        raise ConfigError(f"no run matches {ref!r}{hint} (see `convdeck runs`)")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches[:4])
        raise ConfigError(f"{ref!r} matches {len(matches)} runs ({names}...); give more of the id")
    return matches[0]


def find_run_dir(ref: str | None, home: Path | None = None) -> Path:
    """The run named by ``ref`` (an id or a unique prefix), or the newest live run.

    Raises:
        ConfigError: nothing or several runs match, or (ref None) no run is live.
    """
    if ref is not None:
        return resolve_run(ref, home)
    for run_dir in reversed(list_run_dirs(home)):
        # Only a run whose worker is alive can be live: the cheap check first, so
        # hundreds of old runs are not each folded from their events.
        if worker_alive(run_dir) and summarize_run(run_dir).status in LIVE_STATUSES:
            return run_dir
    raise ConfigError(
        "no live run; start one with `convdeck run`, or name a run (see `convdeck runs`)"
    )


@dataclass(frozen=True)
class Liveness:
    """Whether a worker owns a run, as the run's status needs it.

    ``pid`` is the owning worker's pid, or None when no process owns the run.
    ``hung`` is True when that process still owns the run but has stopped
    touching its heartbeat (stopped by SIGSTOP, stuck in native code).
    """

    pid: int | None = None
    hung: bool = False

    @property
    def alive(self) -> bool:
        """A worker owns the run and is making its heartbeat."""
        return self.pid is not None and not self.hung


def worker_liveness(run_dir: Path) -> Liveness:
    """Who owns ``run_dir`` now: the one question every status reads.

    The lock decides whether a process owns the run, whatever worker.pid
    says; worker.pid names it; the heartbeat's age decides hung or alive.
    A run without a lock file (written before the lock existed) falls back
    to the pid file alone.
    """
    held = lock.is_held(run_dir / LOCK_FILE)
    if held is False:
        return Liveness()
    pid = _live_recorded_pid(run_dir)
    if held and pid is None:
        return _owner_starting_or_lost(run_dir)
    if pid is None:
        return Liveness()
    return Liveness(pid, hung=_heartbeat_age(run_dir) >= heartbeat_stale_seconds())


def worker_alive(run_dir: Path) -> int | None:
    """The worker's pid if a worker owns the run and makes its heartbeat, else None."""
    liveness = worker_liveness(run_dir)
    return liveness.pid if liveness.alive else None


def heartbeat_stale_seconds() -> float:
    """How old a heartbeat makes an owning worker ``hung`` (``$CONVDECK_HEARTBEAT_STALE_SECONDS``)."""
    return seconds_from_env(HEARTBEAT_STALE_ENV, HEARTBEAT_STALE_SECONDS)


def claim_run(run_dir: Path) -> lock.RunLock:
    """Make this process the run's one worker: its lock first, then its pid file.

    Call it before anything else touches the run. The spawning side (when
    it passed :data:`engine.run.lock.STARTED_FD_ENV`) hears this pid, or
    ``busy PID`` naming the owner.

    Raises:
        engine.run.lock.AlreadyRunning: another worker owns the run (nothing was written).
    """
    run_lock = lock.RunLock.claim(run_dir / LOCK_FILE)
    if run_lock is None:
        owner = worker_liveness(run_dir).pid
        lock.tell_spawner(f"busy {owner if owner is not None else '?'}")
        raise lock.AlreadyRunning(run_dir.name, owner)
    write_pid_file(run_dir)
    (run_dir / HEARTBEAT_FILE).touch()  # an old worker's stale heartbeat must not make us look hung
    lock.tell_spawner(str(os.getpid()))
    return run_lock


def write_pid_file(run_dir: Path) -> None:
    """Record this process's pid and start time; the start time guards against a reused pid."""
    import psutil

    started = psutil.Process().create_time()
    tmp = run_dir / (PID_FILE + ".tmp")
    tmp.write_text(f"{os.getpid()} {started}")
    os.replace(tmp, run_dir / PID_FILE)


def read_pid_file(run_dir: Path) -> tuple[int, float] | None:
    """worker.pid's pid and start time (0 when not recorded), or None when unreadable."""
    try:
        pid_text, _, started_text = (run_dir / PID_FILE).read_text().partition(" ")
        return int(pid_text), float(started_text or 0)
    except (OSError, ValueError):
        return None


def recorded_worker(run_dir: Path):
    """The ``psutil.Process`` worker.pid names, if that very process (same start time) runs."""
    import psutil

    recorded = read_pid_file(run_dir)
    if recorded is None or not _same_process(*recorded):
        return None
    try:
        return psutil.Process(recorded[0])
    except psutil.Error:
        return None


def _live_recorded_pid(run_dir: Path) -> int | None:
    recorded = read_pid_file(run_dir)
    return recorded[0] if recorded is not None and _same_process(*recorded) else None


def _owner_starting_or_lost(run_dir: Path) -> Liveness:
    """The lock is held but worker.pid names no live process: a new owner about to write it
    (wait for it, OWNER_RECORD_WAIT_SECONDS), a supervisor reporting on its dead worker (the
    lock comes free), or, past the wait, an owner that is no working worker: hung.
    """
    deadline = time.monotonic() + OWNER_RECORD_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if not lock.is_held(run_dir / LOCK_FILE):
            return Liveness()
        pid = _live_recorded_pid(run_dir)
        if pid is not None:
            return Liveness(pid, hung=_heartbeat_age(run_dir) >= heartbeat_stale_seconds())
    recorded = read_pid_file(run_dir)
    # Without any pid to name, no status can point at the holder; a worker started
    # anyway still meets the lock and leaves (`already running (pid unknown)`).
    return Liveness(recorded[0], hung=True) if recorded else Liveness()


def _heartbeat_age(run_dir: Path) -> float:
    """Seconds since the heartbeat was touched; 0 for a worker still starting (none yet)."""
    try:
        return time.time() - (run_dir / HEARTBEAT_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _same_process(pid: int, started: float) -> bool:
    """True if ``pid`` runs and was started when recorded (guards against pid reuse)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or abs(process.create_time() - started) < 2.0
    except psutil.Error:
        return False


def summarize_run(run_dir: Path) -> RunFacts:
    """A run's facts, from its events and whether a worker owns it."""
    facts = read_facts(run_dir / EVENTS_FILE)
    facts.run_id, facts.run_dir = run_dir.name, run_dir
    facts.liveness = worker_liveness(run_dir)
    facts.observed_at = time.time()
    return facts


def list_runs(home: Path | None = None) -> list[RunFacts]:
    """A summary of every run, oldest first."""
    return [summarize_run(p) for p in list_run_dirs(home)]
