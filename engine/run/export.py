"""``convdeck export``, the TF-free half: a run's scalars as one wide table, and which weights to save.

One row per step, in the order events.jsonl holds them (a step replayed after a
resume from a checkpoint appears again, as it happened). The figures of an
``epoch_end``, a ``validation`` or an ``eval`` go on the row of the step they
came at: the step they name, or the step before them when they name none.

Streaming: events.jsonl is read a chunk at a time, each chunk decoded by msgspec
in one call, step lines kept as their JSON text, and rows are written a block at
a time, so a million-step run exports to CSV in under 2 s of CPU with memory
that does not grow with the run (benchmarks/export_speed.py).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

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
_CHUNK_BYTES = 1 << 20
_BLOCK_ROWS = 5_000
KERAS_SUFFIX = ".keras"

_RawStep = msgspec.defstruct(
    "RawStep",
    [(name, msgspec.Raw, msgspec.Raw()) for name in STEP_COLUMNS],
    tag_field="type",
    tag="step",
    kw_only=True,
)
"""A ``step`` line's figures as the JSON text the worker wrote: no number is parsed and printed again.

Nearly every line of a long run is a step; keeping their text is what makes a
million-step export take about a second. A batched line (lists) becomes a
:class:`protocol.Step` and goes the typed way."""
_chunk_decoder = msgspec.json.Decoder(
    list[Union[(_RawStep, *(cls for cls in protocol.EVENT_CLASSES if cls is not Step))]]  # type: ignore[misc]
)
_ExportRow = msgspec.defstruct("ExportRow", [(name, object, None) for name in COLUMNS])
"""A row as JSON: every column a key, in order (msgspec writes NaN and inf as null: JSON has no spelling for them)."""
_EMPTY_TAIL = len(COLUMNS) - len(STEP_COLUMNS)
_CSV_STEP_TAIL = b"," * _EMPTY_TAIL + b"\n"
_JSON_STEP_FORMAT = (
    "{" + ",".join(f'"{name}":%b' for name in STEP_COLUMNS) + "".join(f',"{name}":null' for name in COLUMNS[8:]) + "}"
).encode()

RawRow = bytes
"""A row of a step alone: its cells' JSON text in :data:`STEP_COLUMNS` order, joined by commas (no cell of a
plain step line holds one); an empty cell or null: none."""


class RowWriter:
    """Where rows go: a CSV file or JSON lines (a binary handle), one block of rows at a time."""

    def __init__(self, handle: IO[bytes], kind: str) -> None:
        self.handle = handle
        self.kind = kind
        self._json = msgspec.json.Encoder()
        if kind == "csv":
            self.handle.write(",".join(COLUMNS).encode() + b"\n")

    def write(self, rows: list[RawRow | list]) -> None:
        """Write a block of rows."""
        if self.kind == "csv":
            self._write_csv(rows)
        else:
            self.handle.write(b"".join([self._json_line(row) for row in rows]))

    def _write_csv(self, rows: list[RawRow | list]) -> None:
        # Runs of step rows are joined in one go, and their nulls emptied in one replace.
        start = 0
        for index, row in enumerate(rows):
            if type(row) is not bytes:
                self._write_step_rows(rows[start:index])
                self.handle.write(self._csv_line(row))
                start = index + 1
        self._write_step_rows(rows[start:])

    def _write_step_rows(self, rows: list[RawRow]) -> None:
        if rows:
            text = _CSV_STEP_TAIL.join(rows) + _CSV_STEP_TAIL
            self.handle.write(text.replace(b"null", b"") if b"null" in text else text)

    @staticmethod
    def _csv_line(row: RawRow | list) -> bytes:
        if type(row) is bytes:
            return (row.replace(b"null", b"") if b"n" in row else row) + _CSV_STEP_TAIL
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(row)
        return text.getvalue().encode()

    def _json_line(self, row: RawRow | list) -> bytes:
        if type(row) is bytes:
            return _JSON_STEP_FORMAT % tuple([cell or b"null" for cell in row.split(b",")]) + b"\n"
        return self._json.encode(_ExportRow(*row)) + b"\n"


def export_table(run_dir: Path, outputs: dict[str, str]) -> int:
    """Write the run's table to each of ``outputs`` (``{"csv": path, "json": path}``; ``-`` is stdout).

    Each file is written beside its path and moved there when whole, so a
    failed export leaves an existing file as it was.

    Returns:
        How many rows each output got.

    Raises:
        ConfigError: an output cannot be written (names the path), or two go to stdout.
    """
    if list(outputs.values()).count("-") > 1:
        raise ConfigError("only one of --csv and --json can go to stdout (-); give the other a file")
    handles: dict[str, IO[bytes]] = {}
    done = False
    try:
        for kind, path in outputs.items():
            handles[kind] = _open_output(path)
        writers = [RowWriter(handle, kind) for kind, handle in handles.items()]
        count = 0
        rows = _iter_rows(run_dir / EVENTS_FILE)
        while block := list(itertools.islice(rows, _BLOCK_ROWS)):
            for writer in writers:
                writer.write(block)
            count += len(block)
        done = True
    except OSError as error:
        raise ConfigError(f"cannot write {', '.join(outputs.values())}: {error.strerror}") from None
    finally:
        for kind, handle in handles.items():
            _close_output(handle, outputs[kind], done)
    return count


def _open_output(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    try:
        return open(_partial(path), "wb")
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}; give a path in a writable folder") from None


def _close_output(handle: IO[bytes], path: str, done: bool) -> None:
    if handle is sys.stdout.buffer:
        handle.flush()
        return
    handle.close()
    if done:
        os.replace(_partial(path), path)
    else:
        Path(_partial(path)).unlink(missing_ok=True)


def _partial(path: str) -> str:
    return f"{path}.part"


def iter_rows(path: str | os.PathLike) -> Iterator[list]:
    """The table's rows (lists in :data:`COLUMNS` order, None where empty), one per step, as the events come."""
    for row in _iter_rows(path):
        yield _typed(row) if type(row) is bytes else row


def _iter_rows(path: str | os.PathLike) -> Iterator[RawRow | list]:
    pending: RawRow | list | None = None
    for event in iter_events_fast(path):
        kind = type(event)
        if kind is _RawStep:
            if pending is not None:
                yield pending
            pending = b",".join((event.step, event.epoch, event.time, event.loss, event.accuracy,
                                 event.learning_rate, event.images_per_sec, event.step_time))  # fmt: skip
            if b"[" in pending:
                # A batched line: split it the protocol's way.
                pending = None
                for single in _typed_step(event).unbatched():
                    if pending is not None:
                        yield pending
                    pending = _step_row(single)
        elif kind is Step:  # from a chunk read line by line (a NaN among its lines)
            for single in event.unbatched():
                if pending is not None:
                    yield pending
                pending = _step_row(single)
        elif kind is EpochEnd or kind is Validation or kind is Eval:
            if type(pending) is bytes:
                pending = _typed(pending)
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


def _typed_step(event: Any) -> Step:
    fields = {name: msgspec.json.decode(raw) for name in STEP_COLUMNS if (raw := getattr(event, name))}
    return protocol.from_dict({"type": "step", **fields})


def _step_row(single: Step) -> list:
    return [getattr(single, name) for name in STEP_COLUMNS] + [None] * _EMPTY_TAIL


def _typed(row: RawRow) -> list:
    return [msgspec.json.decode(cell) if cell else None for cell in row.split(b",")] + [None] * _EMPTY_TAIL


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

    A plain ``step`` line comes as a ``RawStep`` (its figures' JSON text), not a :class:`protocol.Step`.

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
