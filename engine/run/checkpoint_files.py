"""A run's checkpoint files by name: which exist, which saves were cut short, what was recorded.

TF-free, so the client can tell before spawning a worker (and before
TensorFlow loads) that a run has nothing left to resume from. Whether a
checkpoint is intact takes reading it, which is :mod:`engine.train.checkpoints`'
part; this module only looks at names.

``tf.train.CheckpointManager`` (see engine/train/trainer.py) writes, in
``checkpoints/``: ``ckpt-N.index`` and ``ckpt-N.data-XXXXX-of-YYYYY`` per
checkpoint of step N, the state file ``checkpoint`` naming them, and, while a
save is under way, ``ckpt-N_temp/``, which a finished save renames away.
A second manager keeps the best weights in ``checkpoints/best/``, named alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.run.events import EVENTS_FILE, last_event_of

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "checkpoint"
"""The CheckpointManager's state file: which checkpoint is the latest, which it keeps."""
CHECKPOINT_NAME = "ckpt"
"""The CheckpointManager's default ``checkpoint_name``: checkpoints are ``ckpt-<step>``."""
BEST_DIR = "best"
"""``checkpoints/best/``: the best validation's weights (``train.best_metric``), a manager of its own.

A folder, so nothing here takes it for a rolling checkpoint: those are files
named ``ckpt-N.*`` directly in ``checkpoints/``, and only they are listed,
checked, moved aside or resumed from."""
DAMAGED_DIR = "checkpoints.damaged"
"""Where a resume moves checkpoints it cannot read, one folder each: kept to look at, out of the way."""
SCRATCH_ASIDE_DIR = "checkpoints.before-scratch"
"""Where ``resume --from-scratch`` moves what ``checkpoints/`` held."""

_CHECKPOINT_FILE = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.(index|data-\d+-of-\d+)$")
_UNFINISHED_SAVE = re.compile(rf"^{CHECKPOINT_NAME}-\d+_temp$")


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint as found on disk (intact or not)."""

    step: int
    prefix: Path
    """``checkpoints/ckpt-<step>``: what TensorFlow's readers and the state file name."""
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.prefix.name

    @property
    def has_index(self) -> bool:
        return any(path.name.endswith(".index") for path in self.files)


def list_checkpoints(directory: Path) -> list[CheckpointFiles]:
    """Every checkpoint with at least one file in ``directory``, newest first."""
    found: dict[int, list[Path]] = {}
    try:
        entries = list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for path in entries:
        match = _CHECKPOINT_FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(1)), []).append(path)
    return [
        CheckpointFiles(step, Path(directory) / f"{CHECKPOINT_NAME}-{step}", tuple(sorted(paths)))
        for step, paths in sorted(found.items(), reverse=True)
    ]


def unfinished_saves(directory: Path) -> list[Path]:
    """The ``ckpt-N_temp/`` directories of saves that a killed worker never finished."""
    try:
        return sorted(p for p in Path(directory).iterdir() if _UNFINISHED_SAVE.match(p.name) and p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def recorded_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the last ``checkpoint`` event the run's events record, or None."""
    event = last_event_of(Path(run_dir) / EVENTS_FILE, ("checkpoint",))
    step = event.step if event is not None else None
    return step if isinstance(step, int) else None


def from_scratch_hint(run_id: str) -> str:
    """How to go on when no checkpoint can be used: the one remedy, worded once."""
    return (
        f"start it again from step 0 with `convdeck resume {run_id} --from-scratch` "
        f"(what {CHECKPOINTS_DIR}/ holds is moved to {SCRATCH_ASIDE_DIR}/, not deleted)"
    )


def check_something_to_resume(run_dir: Path) -> None:
    """Refuse a resume that would silently start from step 0 where checkpoints existed.

    Decided by file names alone, so it is fast and TF-free: a run with
    checkpoint files goes on to the worker, which reads them. A run that
    never recorded a checkpoint (its worker died before the first one, at
    step 0) has nothing to lose and may start over.

    Raises:
        ConfigError: ``checkpoints/`` holds no checkpoint, yet the run saved
            some (its events record one, or a state file names one).
    """
    run_dir = Path(run_dir)
    directory = run_dir / CHECKPOINTS_DIR
    if list_checkpoints(directory):
        return
    recorded = recorded_checkpoint_step(run_dir)
    state_file = (directory / STATE_FILE).is_file()
    if recorded is None and not state_file:
        return
    found = f"{directory} holds no checkpoint files"
    if state_file:
        found += f" (only its state file {STATE_FILE!r})"
    if recorded is not None:
        found += f", though the run recorded a checkpoint at step {recorded}"
    raise ConfigError(f"run {run_dir.name} has nothing to resume from: {found}; {from_scratch_hint(run_dir.name)}")


def unused_path(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... : the first name not taken, so nothing is overwritten."""
    candidate, number = Path(path), 1
    while candidate.exists():
        number += 1
        candidate = Path(f"{path}.{number}")
    return candidate


def set_aside_for_scratch(run_dir: Path) -> Path | None:
    """Move ``checkpoints/`` out of the way for a start from step 0; where it went, or None if empty.

    Runs in the worker, which owns the run directory, before the trainer
    makes its CheckpointManager on a fresh, empty ``checkpoints/``.
    """
    directory = Path(run_dir) / CHECKPOINTS_DIR
    if not directory.is_dir() or not any(directory.iterdir()):
        directory.mkdir(exist_ok=True)
        return None
    aside = unused_path(Path(run_dir) / SCRATCH_ASIDE_DIR)
    directory.rename(aside)
    directory.mkdir()
    return aside
