"""``convdeck export``, the TF-free half: a run's scalars as one wide table, and which weights to save.

One row per step, in the order events.jsonl holds them (a step replayed after a
resume from a checkpoint appears again, as it happened). The figures of an
``epoch_end``, a ``validation`` or an ``eval`` go on the row of the step they
came at: the step they name, or the step before them when they name none.

Streaming: events.jsonl is read a chunk at a time, each chunk decoded by msgspec
in one call, and rows are written a block at a time, so a million-step run
exports in about a second with flat memory (benchmarks/export_speed.py).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from engine.errors import ConfigError
from engine.run import protocol
from engine.run.checkpoint_files import BEST_DIR, CHECKPOINTS_DIR, list_checkpoints
from engine.run.events import EVENTS_FILE
from engine.run.protocol import EpochEnd, Eval, Event, Step, Validation

STEP_COLUMNS = ("step", "epoch", "time", "loss", "accuracy", "learning_rate", "images_per_sec", "step_time")
"""A step's own figures (``time``: when its line was written, seconds since the epoch)."""
EPOCH_COLUMNS = ("epoch_loss", "epoch_accuracy", "val_loss", "val_accuracy")
"""An ``epoch_end``'s means over the epoch and its validation; ``val_*`` also from a mid-epoch ``validation``."""
EVAL_COLUMNS = ("eval_split", "eval_weights", "eval_loss", "eval_accuracy", "eval_top5_accuracy")
"""An ``eval`` event's summary."""
COLUMNS = STEP_COLUMNS + EPOCH_COLUMNS + EVAL_COLUMNS
"""Every column of the export, in order."""

_INDEX = {name: index for index, name in enumerate(COLUMNS)}
_CHUNK_BYTES = 4 << 20
_BLOCK_ROWS = 20_000
_chunk_decoder = msgspec.json.Decoder(list[protocol.AnyEvent])
KERAS_SUFFIX = ".keras"


_ExportRow = msgspec.defstruct("ExportRow", [(name, object, None) for name in COLUMNS])
"""A row as JSON: every column a key, in order."""
_STEP_ROW_FORMAT = ",".join(["%s", "%s"] + ["%r"] * (len(STEP_COLUMNS) - 2)) + "," * (len(COLUMNS) - len(STEP_COLUMNS))
"""A row that holds only a step's figures (nearly all of them), formatted in one go; None prints as "None"."""
_STEP_ONLY = (None,) * (len(COLUMNS) - len(STEP_COLUMNS))


class RowWriter:
    """Where rows go: a CSV file or JSON lines, one block of rows at a time."""

    def __init__(self, handle: IO[str], kind: str) -> None:
        self.handle = handle
        self.kind = kind
        self._block: list[list] = []
        if kind == "csv":
            self._csv = csv.writer(handle, lineterminator="\n")
            self._csv.writerow(COLUMNS)
        else:
            # msgspec writes NaN and inf as null: JSON has no spelling for them.
            self._json = msgspec.json.Encoder()

    def add(self, row: list) -> None:
        self._block.append(row)
        if len(self._block) >= _BLOCK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._block:
            return
        if self.kind == "csv":
            self._write_csv(self._block)
        else:
            self.handle.write(self._json.encode_lines([_ExportRow(*row) for row in self._block]).decode())
        self._block.clear()

    def _write_csv(self, rows: list[list]) -> None:
        # The csv module spends most of a long export on step rows; they hold numbers (or None)
        # only, so a format string writes them and "None" becomes an empty cell. Rows with an
        # epoch's, a validation's or an evaluation's figures (strings among them) go through csv.
        start = 0
        for index, row in enumerate(rows):
            if row[len(STEP_COLUMNS) :] != list(_STEP_ONLY):
                self._write_step_rows(rows[start:index])
                self._csv.writerow(row)
                start = index + 1
        self._write_step_rows(rows[start:])

    def _write_step_rows(self, rows: list[list]) -> None:
        if rows:
            text = "\n".join([_STEP_ROW_FORMAT % tuple(row[: len(STEP_COLUMNS)]) for row in rows])
            self.handle.write(text.replace("None", "") + "\n")


def export_table(run_dir: Path, outputs: dict[str, str]) -> int:
    """Write the run's table to each of ``outputs`` (``{"csv": path, "json": path}``; ``-`` is stdout).

    Returns:
        How many rows each output got.

    Raises:
        ConfigError: an output cannot be written (names the path).
    """
    handles = {kind: _open_output(path) for kind, path in outputs.items()}
    try:
        writers = [RowWriter(handle, kind) for kind, handle in handles.items()]
        count = 0
        for row in iter_rows(run_dir / EVENTS_FILE):
            for writer in writers:
                writer.add(row)
            count += 1
        for writer in writers:
            writer.flush()
    except OSError as error:
        raise ConfigError(f"cannot write {', '.join(outputs.values())}: {error.strerror}") from None
    finally:
        for handle in handles.values():
            if handle is not sys.stdout:
                handle.close()
    return count


def _open_output(path: str) -> IO[str]:
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", newline="", encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; give a path in a writable folder") from None


def iter_rows(path: str | os.PathLike) -> Iterator[list]:
    """The table's rows (lists in :data:`COLUMNS` order), one per step, as the events come."""
    pending: list | None = None
    for event in iter_events_fast(path):
        kind = type(event)
        if kind is Step:
            for single in event.unbatched() if event._batched() else (event,):
                if pending is not None:
                    yield pending
                pending = [single.step, single.epoch, single.time, single.loss, single.accuracy,
                           single.learning_rate, single.images_per_sec, single.step_time,
                           None, None, None, None, None, None, None, None, None]  # fmt: skip
        elif kind is EpochEnd or kind is Validation or kind is Eval:
            step = event.step
            if pending is None or (step is not None and step != pending[0]):
                # Figures at a step no step line held (or not the last one): a row of their own.
                if pending is not None:
                    yield pending
                pending = [None] * len(COLUMNS)
                pending[0] = step
            _merge(pending, event)
    if pending is not None:
        yield pending


def _merge(row: list, event: Event) -> None:
    if type(event) is EpochEnd:
        values = {"epoch_loss": event.loss, "epoch_accuracy": event.accuracy,
                  "val_loss": event.val_loss, "val_accuracy": event.val_accuracy}  # fmt: skip
        if row[_INDEX["epoch"]] is None:
            values["epoch"] = event.epoch
    elif type(event) is Validation:
        values = {"val_loss": event.val_loss, "val_accuracy": event.val_accuracy}
    else:
        values = {"eval_split": event.split, "eval_weights": event.weights, "eval_loss": event.loss,
                  "eval_accuracy": event.accuracy, "eval_top5_accuracy": event.top5_accuracy}  # fmt: skip
    for name, value in values.items():
        if value is not None:
            row[_INDEX[name]] = value


def iter_events_fast(path: str | os.PathLike) -> Iterator[Event]:
    """Every readable event of ``path``, like :func:`engine.run.events.iter_events`, a chunk per decode.

    A chunk that does not decode as a whole (a torn or garbage line, a NaN) is
    read again line by line with :func:`protocol.parse`, which skips what it cannot read.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        rest = b""
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            data = rest + chunk
            end = data.rfind(b"\n")
            if end < 0:
                rest = data
                continue
            rest = data[end + 1 :]
            yield from _decode_chunk(data[:end])
        if rest.strip():
            event = protocol.parse(rest)
            if event is not None:
                yield event


def _decode_chunk(lines: bytes) -> list[Event]:
    try:
        return _chunk_decoder.decode(b"[" + lines.replace(b"\n", b",") + b"]")
    except msgspec.DecodeError:
        events = (protocol.parse(line) for line in lines.split(b"\n") if line.strip())
        return [event for event in events if event is not None]


# -- which weights to save ----------------------------------------------------------------


def weights_to_export(run_dir: Path) -> tuple[str, str | None]:
    """``best`` when the run kept best weights, else ``last`` with a note saying so.

    Raises:
        ConfigError: the run has no weights at all (no checkpoint, no model.keras).
    """
    checkpoints = run_dir / CHECKPOINTS_DIR
    if list_checkpoints(checkpoints / BEST_DIR):
        return "best", None
    if list_checkpoints(checkpoints) or (run_dir / "model.keras").exists():
        return "last", f"run {run_dir.name} kept no best weights (train.best_metric); exporting its last"
    raise ConfigError(f"run {run_dir.name} has no weights to export yet; train it first (`convdeck resume`)")


def check_model_targets(keras_file: str | None, savedmodel_dir: str | None) -> None:
    """Refuse, before TensorFlow loads, a model target that cannot be written.

    Raises:
        ConfigError: a ``--keras`` file not ending in ``.keras``, or a target in a missing or read-only folder.
    """
    if keras_file is not None and not keras_file.endswith(KERAS_SUFFIX):
        raise ConfigError(f"--keras {keras_file}: the file name must end in {KERAS_SUFFIX}")
    for target in (keras_file, savedmodel_dir):
        if target is None:
            continue
        folder = Path(target).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"cannot write {target}: {folder} is not a writable folder")


EXPORT_TIMEOUT_SECONDS = 1800.0


def export_model_in_subprocess(run_dir: Path, weights: str, keras_file: str | None, savedmodel_dir: str | None) -> None:
    """Save the run's ``weights`` through ``python -m engine.train.export_model`` (TensorFlow loads there).

    Raises:
        ConfigError: the exporter refused (its one line).
        RuntimeError: the exporter failed for another reason (its last lines of output).
    """
    import subprocess

    command = [sys.executable, "-m", "engine.train.export_model", str(run_dir), "--weights", weights]
    if keras_file is not None:
        command += ["--keras", str(Path(keras_file).resolve())]
    if savedmodel_dir is not None:
        command += ["--savedmodel", str(Path(savedmodel_dir).resolve())]
    done = subprocess.run(
        command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=EXPORT_TIMEOUT_SECONDS
    )
    if done.returncode == 2:
        line = (done.stderr.strip().splitlines() or ["export refused"])[-1]
        raise ConfigError(line.removeprefix("convdeck: "))
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"export failed (exit {done.returncode}):\n{tail}")
