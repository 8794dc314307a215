"""Which of a run's checkpoints are intact, and putting ``checkpoints/`` right before a resume.

A worker killed mid-save, a full disk or a stray ``rm`` can leave the newest
checkpoint half written or half gone while the older ones are whole, and
the CheckpointManager's state file (``checkpoints/checkpoint``) missing or
garbage; TensorFlow then fails the restore, or silently starts from step 0
and leaves the good files orphaned. So a resume does not trust the state
file: it reads the checkpoints themselves, newest first, every tensor
(each is checksummed), resumes from the newest that reads back whole, and
writes the state file anew from what is on disk. What it skips, it says
(a ``checkpoint_fallback`` event and a log line) and moves aside, never
deletes.

Event ``checkpoint_fallback``, one per checkpoint skipped (the field list
until engine/run's protocol declares it):

- ``skipped_step`` (int), ``skipped_path`` (str): the damaged checkpoint,
  its prefix as it was in ``checkpoints/``;
- ``reason`` (str): what reading it found (a missing index, a short read,
  a checksum mismatch...);
- ``moved_to`` (str): the folder its files are in now;
- ``used_step`` (int), ``used_path`` (str): the checkpoint the run resumes from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import tensorflow as tf

from engine.errors import ConfigError
from engine.run.checkpoint_files import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    DAMAGED_DIR,
    STATE_FILE,
    CheckpointFiles,
    check_something_to_resume,
    from_scratch_hint,
    list_checkpoints,
    unfinished_saves,
    unused_path,
)
from engine.run.events import EventWriter

_REASON_CHARS = 160  # a reason goes into one terminal line, beside others


def damage(checkpoint: CheckpointFiles) -> str | None:
    """Why ``checkpoint`` cannot be restored, or None when every tensor in it reads back.

    Reading is the only sure test: a truncated data file, a missing shard
    and a flipped byte all look like a checkpoint by their names, and the
    bundle reader checks each tensor's checksum as it reads it.
    """
    if not checkpoint.has_index:
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(str(checkpoint.prefix))
        for name in reader.get_variable_to_dtype_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 - however the read fails, the checkpoint is unusable
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
        return reason[:_REASON_CHARS]
    return None


def recover_checkpoints(run_dir: Path, events: EventWriter) -> CheckpointFiles | None:
    """Make ``checkpoints/`` resumable; returns the checkpoint the run resumes from (None: none yet).

    Removes ``ckpt-N_temp/`` folders of saves that were cut short (the best
    checkpoint's in ``best/`` too; the best itself is never resumed from), moves
    damaged checkpoints newer than the newest intact one to
    ``checkpoints.damaged/``, rebuilds the state file when it is missing,
    unreadable or names anything else, and reports each of these through
    ``events``. Moves nothing when no checkpoint can be used.

    Raises:
        ConfigError: checkpoints existed and none of them is intact (the
            line names each and why), or all of them are gone.
    """
    run_dir = Path(run_dir)
    directory = run_dir / CHECKPOINTS_DIR
    _remove_unfinished_saves(directory, events)
    _remove_unfinished_saves(directory / BEST_DIR, events, shown_as=f"{BEST_DIR}/")
    found = list_checkpoints(directory)
    if not found:
        check_something_to_resume(run_dir)  # all gone although some were saved: refuse
        return None
    damaged: list[tuple[CheckpointFiles, str]] = []
    used = None
    for checkpoint in found:
        reason = damage(checkpoint)
        if reason is None:
            used = checkpoint
            break
        damaged.append((checkpoint, reason))
    if used is None:
        named = ", ".join(f"{c.name} ({reason})" for c, reason in damaged)
        raise ConfigError(f"no intact checkpoint in {directory}: {named}; {from_scratch_hint(run_dir.name)}")
    for checkpoint, reason in damaged:
        _report_fallback(events, checkpoint, reason, _move_aside(checkpoint, run_dir / DAMAGED_DIR), used)
    rebuilt = _rebuild_state(directory, used, [c for c in found if c.step <= used.step])
    if rebuilt:
        events.emit(
            "log",
            level="warning",
            message=f"rebuilt {CHECKPOINTS_DIR}/{STATE_FILE} from the checkpoint files present "
            f"({rebuilt}); resuming from {used.name}",
        )
    return used


def _remove_unfinished_saves(directory: Path, events: EventWriter, shown_as: str = "") -> None:
    """A ``ckpt-N_temp/`` only ever holds a save that never finished: no use to anyone."""
    for path in unfinished_saves(directory):
        shutil.rmtree(path)
        events.emit(
            "log", level="info", message=f"removed {shown_as}{path.name}/, left by a save that was cut short"
        )


def _move_aside(checkpoint: CheckpointFiles, damaged_root: Path) -> Path:
    target = unused_path(damaged_root / checkpoint.name)
    target.mkdir(parents=True)
    for path in checkpoint.files:
        os.replace(path, target / path.name)
    return target


def _report_fallback(
    events: EventWriter, checkpoint: CheckpointFiles, reason: str, moved_to: Path, used: CheckpointFiles
) -> None:
    events.emit(
        "checkpoint_fallback",
        skipped_step=checkpoint.step,
        skipped_path=str(checkpoint.prefix),
        reason=reason,
        moved_to=str(moved_to),
        used_step=used.step,
        used_path=str(used.prefix),
    )
    events.emit(
        "log",
        level="warning",
        message=f"checkpoint {checkpoint.name} is damaged ({reason}); resuming from "
        f"{used.name} (step {used.step}) instead; its files are in {moved_to}",
    )


def _rebuild_state(directory: Path, used: CheckpointFiles, kept: list[CheckpointFiles]) -> str | None:
    """Write the state file from the files when it is not right already; returns why, or None."""
    problem = _state_problem(directory, used, kept)
    if problem is None:
        return None
    oldest_first = sorted(kept, key=lambda c: c.step)
    saved_at = [max(p.stat().st_mtime for p in c.files) for c in oldest_first]
    # The manager deletes a checkpoint past keep_checkpoints only if it was
    # saved after the "last preserved" time: set that before them all, or the
    # old files would never be swept.
    tf.compat.v1.train.update_checkpoint_state(
        str(directory),
        used.name,  # relative names, as the CheckpointManager writes them
        [c.name for c in oldest_first],
        all_model_checkpoint_timestamps=saved_at,
        last_preserved_timestamp=min(saved_at) - 1.0,
    )
    return problem


def _state_problem(directory: Path, used: CheckpointFiles, kept: list[CheckpointFiles]) -> str | None:
    if not (directory / STATE_FILE).is_file():
        return "it was missing"
    try:
        state = tf.train.get_checkpoint_state(str(directory))
    except (UnicodeDecodeError, tf.errors.OpError):
        state = None  # binary garbage: TensorFlow only handles a text parse error itself
    if state is None:
        return "it was unreadable"
    latest = Path(state.model_checkpoint_path)
    if latest != used.prefix:
        return f"it named {latest.name}, not the newest intact {used.name}"
    if {Path(p) for p in state.all_model_checkpoint_paths} != {c.prefix for c in kept}:
        return "its list of checkpoints did not match the files"
    return None
