"""Every message the app's widgets and workers post, in one place.

Workers post small dataclass messages; the event tail posts one message per
batch of events, never one per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

from engine.gpu import GpuSample

if TYPE_CHECKING:
    from engine.config import RunConfig


@dataclass
class PresetsLoaded(Message):
    """The preset list was read (off the UI thread)."""

    presets: list[Any]
    error: str | None = None


@dataclass
class PresetHighlighted(Message):
    """The cursor of the preset list moved to a preset."""

    preset: Any


@dataclass
class PresetChosen(Message):
    """Enter was pressed on a preset: start it."""

    preset: Any


@dataclass
class ConfigEdited(Message):
    """The config pane was edited: a valid config, or the engine's error line."""

    config: RunConfig | None
    error: str | None


@dataclass
class RunEvents(Message):
    """A batch of a watched run's events, already folded into its history.

    Attributes:
        run_id: the run they belong to (a stale tail's events are dropped).
        notable: the events other than steps, for the log and the remedy bar.
        steps: how many step events the batch held.
    """

    run_id: str
    notable: list[dict]
    steps: int


@dataclass
class RunTailEnded(Message):
    """The event tail of a run stopped: the run ended, or reading failed."""

    run_id: str
    error: str | None = None


@dataclass
class LiveRunsFound(Message):
    """The runs that train on this machine were listed (off the UI thread).

    Attributes:
        runs: their facts, oldest first.
        starting: the config about to start, when the list was read to decide whether to ask.
    """

    runs: list[Any]
    starting: RunConfig | None = None


@dataclass
class RunSummaryPolled(Message):
    """The liveness check of the watched run came back."""

    run_id: str
    status: str | None
    reason: str | None = None
    pid: int | None = None


@dataclass
class CommandDone(Message):
    """A control command got its reply."""

    command: str
    reply: dict
    args: dict | None = None


@dataclass
class GpuSampled(Message):
    """One NVML poll finished (a thread worker took it)."""

    sample: GpuSample


@dataclass
class RemedyRequested(Message):
    """A remedy was picked in the remedy bar."""

    name: str


@dataclass
class StartRequested(Message):
    """Enter in a config field: start with what the pane holds."""
