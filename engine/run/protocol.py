"""The event protocol: every event type of events.jsonl and its fields, declared once.

Each event is a frozen msgspec Struct in one tagged union: the ``type``
field picks the class, and every event carries ``time`` (seconds since the
epoch). The worker writes through :func:`make` (engine.run.events.EventWriter
checks every event against its declaration before it reaches the file) and
every reader decodes with :func:`parse`, so a line whose fields do not fit
its type is refused where it is read, like a torn line, not three calls later.

Compatibility: fields are added freely, never renamed or removed; every field
but ``time`` has a default, so the lines of older runs still parse, and
fields a reader does not know are ignored. Numbers that JSON cannot hold
(``NaN``, ``Infinity``, ``1e400``) are read as the floats nan and inf.

A ``step`` line may batch several steps: then each of its figures is a list,
one value per step (:meth:`Step.unbatched` splits it).

TF-free and import-light: the TUI and the CLI decode events with this module.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Union

import msgspec


class Event(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    """What every event has: its type (the tag) and when it was written."""

    time: float

    @property
    def type(self) -> str:
        """The event's type, as written in its ``type`` field."""
        return self.__struct_config__.tag


class RemedyOffer(msgspec.Struct, frozen=True, omit_defaults=True):
    """A remedy an ``oom`` event offers: its name, the TUI key, a title and its predicted effect."""

    name: str
    key: str = ""
    title: str = ""
    effect: str = ""


Ints = Union[int, list[int], None]
"""A step figure that is an integer: one value, or a list when several steps share a line."""
Floats = Union[float, list[Union[float, None]], None]
"""A step figure that is a float: one value, or a list when several steps share a line."""


class RunStarted(Event, tag="run_started"):
    """A worker started (or took over) the run: its config, devices and totals.

    ``resumed_from_step`` is None for a first start, else the checkpoint's step
    it goes on from; ``steps_per_epoch`` and ``epochs`` are the totals it trains to.
    """

    config: dict[str, Any] = {}
    run_id: str = ""
    pid: int | None = None
    devices: list[str] = []
    strategy: str | None = None
    replicas: int | None = None
    per_replica_batch: int | None = None
    replica_devices: list[str] = []
    workers: int | None = None
    worker_index: int | None = None
    chief: bool | None = None
    cluster: list[str] = []
    precision: str | None = None
    model_name: str | None = None
    parameters: int | None = None
    data: str | None = None
    steps_per_epoch: int | None = None
    epochs: int | None = None
    total_steps: int | None = None
    resumed_from_step: int | None = None
    jit_compile: bool | None = None
    """Whether the step runs compiled by XLA (``train.jit_compile``, ``auto`` resolved)."""


class Building(Event, tag="building"):
    """TensorFlow is loaded: the worker reads its data and builds the model (``run_started`` follows).

    It tells a front end the worker's slow start apart: loading TensorFlow before it,
    building the model after it, compiling the first step after ``run_started``.
    """


class Step(Event, tag="step"):
    """One optimizer step (or several, as parallel lists): that batch's figures, as Keras gives them.

    ``epoch`` counts from 1: the epoch this step belongs to.
    """

    step: Ints = None
    epoch: Ints = None
    loss: Floats = None
    accuracy: Floats = None
    learning_rate: Floats = None
    images_per_sec: Floats = None
    step_time: Floats = None

    def unbatched(self) -> list[Step]:
        """One :class:`Step` per step this line holds (a plain line gives itself)."""
        lists = {
            name: value
            for name in STEP_FIGURES
            if isinstance(value := getattr(self, name), list)
        }
        if not lists:
            return [self]
        count = max(len(value) for value in lists.values())
        last_step = self.step if isinstance(self.step, int) else None
        singles = []
        for index in range(count):
            fields = {name: _at(getattr(self, name), index, count) for name in STEP_FIGURES}
            if last_step is not None:
                # A batched line with one step number names its last step.
                fields["step"] = last_step - count + 1 + index
            singles.append(Step(time=self.time, **fields))
        return singles

    def last(self) -> Step:
        """The line's last step (itself when it holds one)."""
        return self.unbatched()[-1] if self._batched() else self

    def _batched(self) -> bool:
        # Spelled out: it runs for every step a reader folds.
        return (
            type(self.step) is list
            or type(self.loss) is list
            or type(self.epoch) is list
            or type(self.accuracy) is list
            or type(self.learning_rate) is list
            or type(self.images_per_sec) is list
            or type(self.step_time) is list
        )


STEP_FIGURES = ("step", "epoch", "loss", "accuracy", "learning_rate", "images_per_sec", "step_time")
"""The fields of a ``step`` event that may be lists."""


def _at(value: Any, index: int, count: int) -> Any:
    if not isinstance(value, list):
        return value
    # A short list lines up with the line's last steps.
    offset = index - (count - len(value))
    return value[offset] if 0 <= offset < len(value) else None


class EpochEnd(Event, tag="epoch_end"):
    """An epoch ended: ``epoch`` is how many have ended; means over its examples, and validation."""

    epoch: int | None = None
    step: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_examples: int | None = None
    """How many training examples ``loss`` and ``accuracy`` are means over (fewer after a mid-epoch resume)."""


class Checkpoint(Event, tag="checkpoint"):
    """A checkpoint was saved at ``step`` (``path`` is its prefix)."""

    step: int | None = None
    path: str | None = None


class Paused(Event, tag="paused"):
    """Training paused (by a command, or after a NaN) at ``step``."""

    step: int | None = None


class Resumed(Event, tag="resumed"):
    """Training went on after a pause, at ``step``."""

    step: int | None = None


class Oom(Event, tag="oom"):
    """A step ran out of memory; ``waiting``: the worker waits for one of ``remedies``.

    ``remedies`` are :class:`RemedyOffer` entries (older runs wrote bare names).
    """

    step: int | None = None
    batch_size: int | None = None
    message: str = ""
    device: str | None = None
    memory: dict[str, Any] = {}
    remedies: list[Union[RemedyOffer, str]] = []
    policy: str | None = None
    waiting: bool = True


class RemedyApplied(Event, tag="remedy_applied"):
    """A remedy became config revision ``revision``: ``changes`` maps ``section.field`` to [old, new]."""

    name: str = ""
    revision: int | None = None
    step: int | None = None
    changes: dict[str, Annotated[list[Any], msgspec.Meta(min_length=2, max_length=2)]] = {}
    fresh_model: bool = False


class Nan(Event, tag="nan"):
    """The loss of ``step`` was not finite; the worker went back to the last checkpoint."""

    step: int | None = None


class Finished(Event, tag="finished"):
    """The worker ended the run: ``reason`` completed, stopped (asked to) or nan; final figures."""

    reason: str = "completed"
    steps: int | None = None
    elapsed: float | None = None
    best_val_accuracy: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None


class Failed(Event, tag="failed"):
    """The run failed: one line of ``error``; ``user_error`` when the config was at fault."""

    error: str = ""
    traceback_path: str | None = None
    user_error: bool = False


class Log(Event, tag="log"):
    """A line for people; ``restarting`` names the remedy a worker restarts with."""

    level: str = "info"
    message: str = ""
    restarting: str | None = None


class MemoryWarning(Event, tag="memory_warning"):
    """Before training: the run's estimated memory will likely not fit the GPU's free memory."""

    estimate_bytes: int | None = None
    free_bytes: int | None = None
    budget_bytes: int | None = None
    batch_size: int | None = None
    suggested_batch_size: int | None = None
    largest_batch_size: int | None = None
    estimate: dict[str, Any] = {}
    message: str = ""


class WorkerExit(Event, tag="worker_exit"):
    """From the supervisor: the worker died, by a signal or without a final event; how, and what next."""

    pid: int | None = None
    final_event: bool = False
    returncode: int | None = None
    signal: str | None = None
    signal_number: int | None = None
    host_memory_low: bool = False
    suggestion: str = ""
    message: str = ""
    worker_rss_bytes: int | None = None
    worker_peak_rss_bytes: int | None = None
    host_available_bytes: int | None = None
    host_total_bytes: int | None = None
    oom_kills: int | None = None


class CheckpointFallback(Event, tag="checkpoint_fallback"):
    """``resume`` found the newest checkpoint damaged and went on from an older, intact one.

    The damaged one's files were moved to ``moved_to`` (never deleted).
    """

    skipped_step: int | None = None
    skipped_path: str = ""
    reason: str = ""
    moved_to: str = ""
    used_step: int | None = None
    used_path: str = ""


class Validation(Event, tag="validation"):
    """A validation inside an epoch (``train.val_every_steps``); an epoch's own is its ``epoch_end``."""

    step: int | None = None
    epoch: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None


class BestCheckpoint(Event, tag="best_checkpoint"):
    """The run's best weights so far by ``metric`` were kept in ``path`` (``checkpoints/best/``)."""

    step: int | None = None
    epoch: int | None = None
    metric: str = ""
    value: float | None = None
    previous: float | None = None
    path: str = ""


class Eval(Event, tag="eval"):
    """An evaluation of the run's weights: its summary (the whole report is ``path``, eval.json)."""

    split: str = ""
    weights: str = ""
    examples: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    top5_accuracy: float | None = None
    worst_classes: list[str] = []
    path: str = ""
    step: int | None = None
    trigger: str = ""


EVENT_CLASSES: tuple[type[Event], ...] = (
    RunStarted,
    Step,
    EpochEnd,
    Checkpoint,
    Paused,
    Resumed,
    Oom,
    RemedyApplied,
    Nan,
    Finished,
    Failed,
    Log,
    MemoryWarning,
    WorkerExit,
    CheckpointFallback,
    Validation,
    BestCheckpoint,
    Eval,
    Building,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in EVENT_CLASSES}
"""Every event type, by its ``type`` tag."""
AnyEvent = Union[EVENT_CLASSES]  # type: ignore[valid-type]
TERMINAL_EVENTS = (Finished, Failed)
"""The events that end a worker's part of a run (a later ``run_started`` re-opens it)."""

_decoder = msgspec.json.Decoder(AnyEvent)


class EventError(ValueError):
    """An event does not fit its declaration."""


def parse(line: bytes | str) -> Event | None:
    """One event from one line, or None for a torn, garbage or wrong-typed line."""
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        pass
    try:
        return _lenient(line)
    except EventError:
        return None


def decode(line: bytes | str) -> Event:
    """One event from one line.

    Raises:
        EventError: the line is not JSON, or not an event as declared (says why).
    """
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        return _lenient(line)


def _lenient(line: bytes | str) -> Event:
    """The slow path: JSON that msgspec refuses (NaN, Infinity, 1e400) or a line that does not fit."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as error:
        raise EventError(f"not JSON: {error}") from None
    return from_dict(data)


def from_dict(data: Any) -> Event:
    """The event a JSON object describes.

    Raises:
        EventError: not an object with a known ``type`` and fields of the declared types.
    """
    try:
        return msgspec.convert(data, AnyEvent)
    except msgspec.ValidationError as error:
        raise EventError(f"{_type_of(data)}: {error}") from None


def _type_of(data: Any) -> str:
    kind = data.get("type") if isinstance(data, dict) else None
    return f"event {kind!r}" if isinstance(kind, str) else "not an event"


def make(type: str, time: float, **fields: Any) -> Event:
    """Build one event and check it against its declaration.

    Numpy scalars and arrays become numbers and lists, paths strings.

    Raises:
        EventError: an unknown type, a field the type does not declare, or a
            value of the wrong type (each names the event and the field).
    """
    return check({"type": type, "time": time, **plain(fields)})


def check(record: dict) -> Event:
    """The event ``record`` (plain JSON data) describes, held to its declaration.

    Stricter than reading: a field the type does not declare is an error
    here, where a writer can still declare it, while readers ignore it.

    Raises:
        EventError: as :func:`make`.
    """
    kind = record.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(f"unknown event type {kind!r}; declare it in engine/run/protocol.py")
    unknown = sorted(set(record) - {"type", *cls.__struct_fields__})
    if unknown:
        raise EventError(
            f"event {kind!r} has no field {', '.join(map(repr, unknown))}; "
            "declare it in engine/run/protocol.py"
        )
    return from_dict(record)


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars and arrays as numbers and lists, paths as text."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float)):  # subclasses: bool is handled above
        return value
    return str(value)


def to_dict(event: Event, defaults: bool = False) -> dict:
    """The event as plain JSON data, ``type`` first.

    Args:
        event: the event.
        defaults: keep the fields at their default too (every declared field).
    """
    data = msgspec.to_builtins(event)
    if defaults:
        data.update(msgspec.to_builtins(msgspec.structs.asdict(event)))
    return {"type": data.pop("type"), "time": data.pop("time"), **data}


def to_json_line(event: Event) -> str:
    """The event as EventWriter writes it: one JSON line (``type`` first, NaN as NaN)."""
    return json.dumps(to_dict(event)) + "\n"


def field_names(type: str) -> tuple[str, ...]:
    """The fields an event type declares (besides ``type``)."""
    return EVENT_TYPES[type].__struct_fields__
