"""The run store: ``$CONVDECK_HOME/runs/<run-id>/`` and each run's status.

TF-free. A run's status comes from its events (folded into
:class:`engine.run.facts.RunFacts`) and from whether a worker owns it
(:func:`worker_liveness`).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.run.events import EVENTS_FILE
from engine.run.facts import LIVE_STATUSES, RunFacts, read_facts

if TYPE_CHECKING:
    from engine.config import RunConfig  # read and written lazily: pydantic costs ~0.15 s

CONFIG_FILE = "config.toml"
PID_FILE = "worker.pid"
HEARTBEAT_FILE = "heartbeat"
SOCKET_FILE = "control.sock"
# The worker touches its heartbeat every few seconds; a step can take long
# on a big model, so only a much older heartbeat counts as a hung worker.
HEARTBEAT_STALE_SECONDS = 120.0



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


def create_run_dir(config: RunConfig, home: Path | None = None) -> Path:
    """Make a run directory (mode 0700) holding the run's config.toml."""
    root = runs_root(home)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_id = new_run_id(config.name)
    for attempt in range(1, 1000):
        run_dir = root / (run_id if attempt == 1 else f"{run_id}{attempt}")
        try:
            run_dir.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue  # two runs of one preset in the same second drew the same tail
    os.chmod(run_dir, 0o700)  # mkdir's mode is masked by the umask
    (run_dir / "checkpoints").mkdir()
    write_config(run_dir, config)
    return run_dir


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
    """The run's current config; ConfigError with one line when unreadable."""
    from engine.config import validate_config

    data = _load_config_toml(run_dir)
    data.pop("revisions", None)
    return validate_config(data, source=str(run_dir / CONFIG_FILE))


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
    """Who owns ``run_dir`` now: the one question every status reads."""
    try:
        pid_text, _, started_text = (run_dir / PID_FILE).read_text().partition(" ")
        pid, started = int(pid_text), float(started_text or 0)
    except (OSError, ValueError):
        return Liveness()
    if not _same_process(pid, started):
        return Liveness()
    try:
        age = time.time() - (run_dir / HEARTBEAT_FILE).stat().st_mtime
    except OSError:
        return Liveness(pid)  # a worker still starting has no heartbeat yet
    return Liveness(pid, hung=age >= HEARTBEAT_STALE_SECONDS)


def worker_alive(run_dir: Path) -> int | None:
    """The worker's pid if the recorded process still runs and its heartbeat is fresh."""
    try:
        pid_text, _, started_text = (run_dir / PID_FILE).read_text().partition(" ")
        pid, started = int(pid_text), float(started_text or 0)
    except (OSError, ValueError):
        return None
    if not _same_process(pid, started):
        return None
    try:
        age = time.time() - (run_dir / HEARTBEAT_FILE).stat().st_mtime
    except OSError:
        return pid  # a worker still starting has no heartbeat yet
    return pid if age < HEARTBEAT_STALE_SECONDS else None


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
    return facts


def list_runs(home: Path | None = None) -> list[RunFacts]:
    """A summary of every run, oldest first."""
    return [summarize_run(p) for p in list_run_dirs(home)]
