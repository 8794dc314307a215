"""``convdeck export``, the TF-free half: a run's scalars as one wide table, and which weights to save.

One row per step, in the order events.jsonl holds them (a step replayed after a
resume from a checkpoint appears again, as it happened). The figures of an
``epoch_end``, a ``validation`` or an ``eval`` go on the row of the step they
came at: the step they name, or the step before them when they name none.

Streaming: events.jsonl is read a chunk at a time and each chunk decoded by
msgspec in one call. A plain step line becomes a :data:`StepRow`, a row whose
cells are the JSON text the worker wrote, so no number is parsed or printed
again: a run of such rows goes to JSON lines in one ``encode_lines`` call and
to CSV in one join. Rows are written a chunk at a time, so memory does not grow
with the run: a million-step run exports to CSV in 1.1 s of CPU and to JSON
lines in 1.5 s, with a 12 MB heap peak (benchmarks/export_speed.py).
"""

from __future__ import annotations

import csv
import io
import operator
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

import msgspec

from engine.errors import ConfigError, raise_for_child
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
KERAS_SUFFIX = ".keras"

_NULL = msgspec.Raw(b"null")
StepRow = msgspec.defstruct(
    "StepRow",
    [(name, msgspec.Raw, _NULL) for name in STEP_COLUMNS],
    tag_field="type",
    tag="step",
    kw_only=True,
    gc=False,
)
"""A ``step`` line as a row: its :data:`STEP_COLUMNS`, in order, as JSON text (``null`` where the line has none).

Nearly every line of a long run is a step; keeping their text is what makes a
million-step export take about a second. The other columns of its row are
empty (figures merged into a row make it a typed row); a batched line (lists)
goes the typed way too. Untracked by the garbage collector (its cells are bytes:
no cycle), so a million of them set off no collections."""
_chunk_decoder = msgspec.json.Decoder(
    list[Union[(StepRow, *(cls for cls in protocol.EVENT_CLASSES if cls is not Step))]]  # type: ignore[misc]
)
_step_cells = operator.attrgetter(*STEP_COLUMNS)
_EMPTY_TAIL = len(COLUMNS) - len(STEP_COLUMNS)

Row = Any
"""A row: a :data:`StepRow`, or a list in :data:`COLUMNS` order (None where empty) where figures were merged,
a line was batched or a chunk had to be read line by line."""

_ExportRow = msgspec.defstruct("ExportRow", [(name, object, None) for name in COLUMNS])
"""A typed row as JSON: every column a key, in order (msgspec writes NaN and inf as null: JSON has no spelling
for them)."""
_JSON_TAG = b'{"type":"step",'
_JSON_STEP_TAIL = ("".join(f',"{name}":null' for name in COLUMNS[len(STEP_COLUMNS) :]) + "}\n").encode()
_CSV_STEP_TAIL = b"," * _EMPTY_TAIL + b"\n"


class RowWriter:
    """Where rows go: a CSV file or JSON lines (a binary handle), one block of rows at a time."""

    def __init__(self, handle: IO[bytes], kind: str) -> None:
        self.handle = handle
        self.kind = kind
        self._json = msgspec.json.Encoder()
        if kind == "csv":
            self.handle.write(",".join(COLUMNS).encode() + b"\n")

    def write(self, rows: list[Row]) -> None:
        """Write a block of rows: each run of step rows in one go, a typed row on its own."""
        start = 0
        for index in [index for index, row in enumerate(rows) if type(row) is list]:
            self._write_step_rows(rows[start:index])
            self.handle.write(self._typed_line(rows[index]))
            start = index + 1
        self._write_step_rows(rows[start:])

    def _write_step_rows(self, rows: list[Any]) -> None:
        if not rows:
            return
        if self.kind == "csv":
            # A step row's other columns are null: its eight cells, then empty ones; null means empty.
            text = _CSV_STEP_TAIL.join([b",".join(_step_cells(row)) for row in rows]) + _CSV_STEP_TAIL
            self.handle.write(text.replace(b"null", b"") if b"null" in text else text)
        else:
            # The encoder writes the struct's tag first (a row has no "type" column), and no empty columns.
            text = self._json.encode_lines(rows).replace(_JSON_TAG, b"{")
            self.handle.write(text.replace(b"}\n", _JSON_STEP_TAIL))

    def _typed_line(self, row: list) -> bytes:
        if self.kind == "json":
            return self._json.encode(_ExportRow(*row)) + b"\n"
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(row)
        return text.getvalue().encode()


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
        for block in iter_row_blocks(run_dir / EVENTS_FILE):
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
    for block in iter_row_blocks(path):
        for row in block:
            yield row if type(row) is list else _typed(row)


def iter_row_blocks(path: str | os.PathLike) -> Iterator[list[Row]]:
    """The table's rows a chunk of events.jsonl at a time (:data:`Row`: step rows keep their JSON text).

    The last row of a chunk is held back until the next: figures after it may still belong on it.
    """
    rows: list[Row] = []
    for events in iter_event_chunks(path):
        others = [index for index, event in enumerate(events) if type(event) is not StepRow]
        start = 0
        for index in others:
            rows.extend(events[start:index])
            _add_event(rows, events[index])
            start = index + 1
        rows.extend(events[start:])
        if len(rows) > 1:
            yield rows[:-1]
            rows = rows[-1:]
    if rows:
        yield rows


def _add_event(rows: list[Row], event: Event) -> None:
    kind = type(event)
    if kind is Step:  # from a chunk read line by line (a NaN among its lines)
        rows.extend(_step_row(single) for single in event.unbatched())
    elif kind is EpochEnd or kind is Validation or kind is Eval:
        if rows and type(rows[-1]) is not list:
            rows[-1] = _typed(rows[-1])
        step = event.step
        if not rows or (step is not None and step != rows[-1][0]):
            # Figures at a step no step line held (or not the last one): a row of their own.
            rows.append([step] + [None] * (len(COLUMNS) - 1))
        _merge(rows[-1], event)


def _typed_step(row: Any) -> Step:
    fields = {name: msgspec.json.decode(getattr(row, name)) for name in STEP_COLUMNS}
    return protocol.from_dict({"type": "step", **fields})


def _step_row(single: Step) -> list:
    return [getattr(single, name) for name in STEP_COLUMNS] + [None] * _EMPTY_TAIL


def _typed(row: Any) -> list:
    return [msgspec.json.decode(cell) for cell in _step_cells(row)] + [None] * _EMPTY_TAIL


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


def iter_event_chunks(path: str | os.PathLike) -> Iterator[list[Event]]:
    """Every readable event of ``path``, like :func:`engine.run.events.iter_events`, a list per chunk.

    A plain ``step`` line comes as a :data:`StepRow` (its figures' JSON text), not a :class:`protocol.Step`.

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
            yield _decode_chunk(data[:end])
        if rest.strip():
            event = protocol.parse(rest)
            if event is not None:
                yield [event]


def _decode_chunk(lines: bytes) -> list[Event]:
    try:
        events = _chunk_decoder.decode(b"[" + lines.replace(b"\n", b",") + b"]")
    except msgspec.DecodeError:
        events = (protocol.parse(line) for line in lines.split(b"\n") if line.strip())
        return [event for event in events if event is not None]
    if b"[" in lines:
        # A batched step line (lists) is typed, to be split the protocol's way; most chunks hold no "[".
        for index in [index for index, event in enumerate(events) if type(event) is StepRow and _is_batched(event)]:
            events[index] = _typed_step(events[index])
    return events


def _is_batched(row: Any) -> bool:
    return b"[" in b"".join(_step_cells(row))


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
    raise_for_child(done.returncode, done.stderr, "export")
