"""Tidying the run store: remove runs by name, or prune them by status and age.

A run whose worker is alive is never touched: its liveness is the store's
one answer (:func:`engine.run.store.worker_liveness`), asked again just
before each removal, so a run resumed meanwhile is kept.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.run.events import EVENTS_FILE
from engine.run.store import (
    CONFIG_FILE,
    list_run_dirs,
    resolve_run,
    summarize_run,
    worker_liveness,
)

AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AGE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
# What `prune --failed` takes: a failed run ended on an error. A crashed one
# (its worker died, e.g. with the machine) is kept: it may be worth resuming.
PRUNABLE_STATUSES = ("failed",)


@dataclass(frozen=True)
class Removal:
    """One run that was (or, in a dry run, would be) removed."""

    run_dir: Path
    status: str
    idle_seconds: float

    @property
    def run_id(self) -> str:
        return self.run_dir.name


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d`` or ``2w`` as seconds.

    Raises:
        ConfigError: not a number followed by one of m, h, d, w.
    """
    match = AGE_PATTERN.match(text)
    if not match:
        raise ConfigError(
            f"--older-than {text!r}: expected a number and a unit (m, h, d or w), e.g. 30m, 12h or 7d"
        )
    return float(match[1]) * AGE_UNITS[match[2]]


def live_run_message(run_dir: Path) -> str | None:
    """Why ``run_dir`` must not be removed now, and how to stop it; None when no worker owns it."""
    liveness = worker_liveness(run_dir)
    if liveness.pid is None:
        return None
    run_id, pid = run_dir.name, liveness.pid
    if liveness.hung:
        return f"run {run_id} is hung (worker pid {pid}); end it with `kill {pid}`, then remove it"
    return f"run {run_id} is running (worker pid {pid}); stop it with `convdeck ctl {run_id} stop`, then remove it"


def remove_runs(refs: list[str], home: Path | None = None) -> list[Removal]:
    """Remove the runs named by ``refs`` (ids or unique prefixes), all or none.

    Raises:
        ConfigError: a ref matches no run or several, or a named run is live;
            then nothing is removed.
    """
    run_dirs = list(dict.fromkeys(resolve_run(ref, home) for ref in refs))
    for run_dir in run_dirs:
        refusal = live_run_message(run_dir)
        if refusal:
            raise ConfigError(refusal)
    now = time.time()
    removals = [describe(run_dir, now) for run_dir in run_dirs]
    return [removal for removal in removals if remove(removal.run_dir)]


def prune_runs(
    *,
    failed: bool = False,
    older_than: float | None = None,
    dry_run: bool = False,
    home: Path | None = None,
    now: float | None = None,
) -> list[Removal]:
    """Remove every run that matches all the given filters; never a live one.

    Args:
        failed: only runs whose status is ``failed``.
        older_than: only runs not written to for this many seconds.
        dry_run: remove nothing; return what would be removed.
        home: the convdeck home (``$CONVDECK_HOME`` when None).
        now: the time ages are measured from (the clock when None).

    Raises:
        ConfigError: neither filter was given.
    """
    if not failed and older_than is None:
        raise ConfigError("prune needs --failed, --older-than AGE, or both (e.g. prune --older-than 7d)")
    now = time.time() if now is None else now
    chosen = []
    for run_dir in list_run_dirs(home):
        if worker_liveness(run_dir).pid is not None:
            continue
        candidate = describe(run_dir, now)
        if failed and candidate.status not in PRUNABLE_STATUSES:
            continue
        if older_than is not None and candidate.idle_seconds < older_than:
            continue
        chosen.append(candidate)
    if dry_run:
        return chosen
    return [removal for removal in chosen if remove(removal.run_dir)]


def describe(run_dir: Path, now: float) -> Removal:
    return Removal(run_dir, summarize_run(run_dir).status, max(0.0, now - last_written(run_dir)))


def last_written(run_dir: Path) -> float:
    """When the run last changed: its newest event, config revision, or the directory itself."""
    times = []
    for path in (run_dir / EVENTS_FILE, run_dir / CONFIG_FILE, run_dir):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)


def remove(run_dir: Path) -> bool:
    """Delete ``run_dir`` unless a worker took it meanwhile; True once it is gone."""
    if worker_liveness(run_dir).pid is not None:
        return False
    try:
        shutil.rmtree(run_dir)
    except OSError as error:
        raise ConfigError(f"cannot remove run {run_dir.name}: {error.filename}: {error.strerror}") from None
    return True


def format_age(seconds: float) -> str:
    """An age in the largest whole unit that fits: ``3d``, ``5h``, ``12m``, ``0m``."""
    for unit in ("w", "d", "h", "m"):
        if seconds >= AGE_UNITS[unit]:
            return f"{int(seconds // AGE_UNITS[unit])}{unit}"
    return "0m"
