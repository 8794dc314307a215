"""A run's facts, folded from its events in one place: what every front end shows.

:class:`RunFacts` takes events one at a time (:meth:`RunFacts.fold`) and
keeps what `convdeck runs`, `convdeck show`, `ctl`, the progress bar and the
TUI all print: status and phase, progress and totals, the model and config
as the run trains now, last and best figures, images/s, the ETA, the
reason it ended or waits, and a pending out-of-memory error with the
remedies it offers. None of them keeps an idea of its own.

Of a run of ``step`` events only the last one before any other event
matters here, so a reader may skip the others unparsed (:class:`LogFolder`
does, and the TUI's thinned history keeps those): folding every event or
only those gives the same facts.

Whether a worker owns the run is not in the events: a reader sets
``liveness`` (``engine.run.store.worker_liveness``) and the status combines both.

TF-free and import-light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.run import protocol
from engine.run.events import STEP_LINE_PREFIX
from engine.run.protocol import (
    Building,
    Checkpoint,
    EpochEnd,
    Event,
    Failed,
    Finished,
    Log,
    Nan,
    Oom,
    Paused,
    RemedyApplied,
    RemedyOffer,
    Resumed,
    RunStarted,
    Step,
    WorkerExit,
)

if TYPE_CHECKING:
    from engine.run.store import Liveness

STATUSES = ("running", "paused", "waiting", "stalled", "hung", "finished", "stopped", "failed", "crashed", "pruned")
"""A run's status, as `runs` and `show` print it."""
LIVE_STATUSES = ("running", "paused", "waiting", "stalled")
"""Statuses whose worker is alive and takes commands (a stalled one answers ``ctl stacks``)."""
STALL_MIN_SECONDS = 60.0
STALL_STEP_FACTOR = 20.0
"""A live run with no step for max(STALL_MIN_SECONDS, STALL_STEP_FACTOR x its steady step time) is stalled."""
STALL_MIN_ENV = "CONVDECK_STALL_MIN_SECONDS"  # tests shorten the minute
PHASES = (
    "starting",  # the worker loads TensorFlow: no event yet
    "building",  # TensorFlow loaded (a building event): it reads its data and builds the model
    "loading",  # run_started, no step yet: the first call traces and compiles
    "training",
    "validating",  # the epoch's last step is done, its epoch_end not yet
    "paused",
    "waiting",  # for a remedy, after an out-of-memory error
    "restarting",  # with a remedy: the worker checkpoints and replaces itself
    "ended",
)
"""What the worker is doing, as far as its events tell."""
PHASE_WORDS = {
    "starting": "loading TensorFlow",
    "building": "building model",
    "loading": "compiling the first step",
    "training": "training",
    "validating": "validating",
    "paused": "paused",
    "waiting": "waiting for a remedy",
    "restarting": "restarting",
    "ended": "ended",
}
"""Each phase as a person reads it (``convdeck run`` while it waits, ``convdeck show``)."""
WAITING_PHASES = ("starting", "building", "loading")
"""The phases before a worker's first step: it works, but no figure moves yet."""
FINISHED_REASONS = ("completed", "early_stop")
"""A ``finished`` event's reasons for a run that trained as asked: every epoch, or until
``train.early_stop_patience`` saw no more gain. Its status is ``finished``."""
PRUNED_REASON = "pruned"
"""A sweep's pruner stopped the run (``stop`` with that name): its status is ``pruned``."""
RESTART_LOG_PREFIX = "applying remedy "
"""How a worker's ``log`` event announced its restart before it carried ``restarting``."""


@dataclass(eq=True)
class RunFacts:
    """Everything known about one run from its events (and, once set, its worker's liveness).

    Attributes:
        preset: the preset's name (config ``name``); ``model`` says what trains now.
        config: the config as the run trains now: the worker's, with the
            remedies applied since laid over it.
        revision: the config revision (0 until a remedy changes it).
        epoch: the epoch of the last step, counted from 1 (0 before the first).
        epochs_done: how many epochs have ended.
        pending_oom: the ``oom`` event that waits for a remedy, else None.
        unreadable_lines: torn, garbage and wrong-typed lines skipped by the reader.
        liveness: who owns the run (None: not asked; the events alone then decide).
        last_words: the end of worker.log, said when the worker died without an event.
    """

    run_id: str = ""
    run_dir: Path | None = None
    preset: str = "?"
    config: dict = field(default_factory=dict)
    revision: int = 0
    remedies: list[str] = field(default_factory=list)
    starts: int = 0
    worker_pid: int | None = None
    strategy: str | None = None
    replicas: int | None = None
    workers: int | None = None
    step: int = 0
    epoch: int = 0
    epochs_done: int = 0
    epoch_end_step: int = 0
    epochs: int | None = None
    steps_per_epoch: int | None = None
    last_loss: float | None = None
    last_accuracy: float | None = None
    learning_rate: float | None = None
    images_per_sec: float | None = None
    step_time: float | None = None
    last_epoch: EpochEnd | None = None
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    checkpoint: Checkpoint | None = None
    started: float = 0.0
    last_time: float = 0.0
    ended: Finished | Failed | None = None
    died: WorkerExit | None = None
    paused: bool = False
    pending_oom: Oom | None = None
    restarting: str | None = None
    nan_step: int | None = None
    building: bool = False
    """A worker has loaded TensorFlow and builds its model: no run_started yet."""
    stepped_since_start: bool = False
    unreadable_lines: int = 0
    liveness: Liveness | None = None
    observed_at: float | None = None
    """When ``liveness`` was read (wall clock): a stall is judged against it, never against the events alone."""
    last_words: str = ""
    last_step_at: float = 0.0
    rate_origin: tuple[float, int] | None = None
    """(time, step) of the current worker's first step line: after tracing, where its steady rate starts."""
    validation_seconds: float | None = None
    """How long the last validation took (its epoch_end after the epoch's last step)."""
    validated_since_origin: float = 0.0
    epoch_ends_seen: tuple[float, float, int] | None = None
    """This worker's epoch ends: (first time, last time, how many) — the steadiest clock of a run."""

    # -- folding ----------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> RunFacts:
        """Fold a batch of events in, in order; returns self."""
        for event in events:
            self.fold(event)
        return self

    def fold(self, event: Event) -> None:
        """Fold one event in."""
        if math.isfinite(event.time):  # JSON may say 1e400: read as inf, kept out of the clock
            self.last_time = event.time
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _on_run_started(self, event: RunStarted) -> None:
        self.starts += 1
        if not self.started and math.isfinite(event.time):
            self.started = event.time
        self.run_id = event.run_id or self.run_id
        self.worker_pid = event.pid if event.pid is not None else self.worker_pid
        if event.config:
            self.config = event.config
            self.preset = str(event.config.get("name") or self.preset)
        self.epochs = event.epochs or _int(_section(self.config, "train").get("epochs")) or self.epochs
        self.steps_per_epoch = event.steps_per_epoch or self.steps_per_epoch
        self.strategy = event.strategy or self.strategy
        self.replicas = event.replicas or self.replicas
        self.workers = event.workers or self.workers
        if event.resumed_from_step is not None:
            self.step = event.resumed_from_step
        # A new worker: what ended or waited before is over (a stop, a crash, an OOM).
        self.ended = self.died = self.pending_oom = self.restarting = self.nan_step = None
        self.paused = self.stepped_since_start = self.building = False
        self.rate_origin = None  # a new worker traces again, maybe at another batch size
        self.validated_since_origin = 0.0
        self.epoch_ends_seen = None

    def _on_building(self, event: Building) -> None:
        self.building = True

    def _on_step(self, event: Step) -> None:
        last = event.last()
        self.step = _int(last.step) if last.step is not None else self.step + 1
        self.epoch = _int(last.epoch) if last.epoch is not None else self.epoch
        self.last_loss = _float(last.loss, self.last_loss)
        self.last_accuracy = _float(last.accuracy, self.last_accuracy)
        self.learning_rate = _float(last.learning_rate, self.learning_rate)
        self.images_per_sec = _float(last.images_per_sec, self.images_per_sec)
        self.step_time = _float(last.step_time, self.step_time)
        self.stepped_since_start = True
        if math.isfinite(event.time):
            self.last_step_at = event.time
            if self.rate_origin is None:
                self.rate_origin = (event.time, self.step)
        # Steps go on: whatever waited (an OOM, a restart) is behind the run.
        self.pending_oom = self.restarting = None

    def _on_epoch_end(self, event: EpochEnd) -> None:
        if self.rate_origin is not None and self.last_step_at and math.isfinite(event.time):
            # The epoch's last step line came just before: the gap is the validation (the
            # worker traces the evaluation before its first step, so the first one is steady too).
            self.validation_seconds = max(0.0, event.time - self.last_step_at)
            self.validated_since_origin += self.validation_seconds
        if math.isfinite(event.time):
            first, _, count = self.epoch_ends_seen or (event.time, event.time, 0)
            self.epoch_ends_seen = (first, event.time, count + 1)
        self.last_epoch = event
        if event.epoch is not None:
            self.epochs_done = event.epoch
            self.epoch = max(self.epoch, event.epoch)
        self.epoch_end_step = event.step if event.step is not None else self.step
        value = event.val_accuracy
        if value is not None and math.isfinite(value):
            if self.best_val_accuracy is None or value > self.best_val_accuracy:
                self.best_val_accuracy, self.best_epoch = value, event.epoch

    def _on_checkpoint(self, event: Checkpoint) -> None:
        self.checkpoint = event

    def _on_paused(self, event: Paused) -> None:
        self.paused = True

    def _on_resumed(self, event: Resumed) -> None:
        self.paused = False
        self.nan_step = None

    def _on_oom(self, event: Oom) -> None:
        self.pending_oom = event if event.waiting else None

    def _on_remedy_applied(self, event: RemedyApplied) -> None:
        # Written by the worker that takes over, before its run_started.
        self.remedies.append(event.name)
        self.revision = event.revision if event.revision is not None else self.revision + 1
        self.config = _with_changes(self.config, event.changes)
        spe = event.changes.get("train.steps_per_epoch")
        if spe is not None and isinstance(spe[1], int):
            self.steps_per_epoch = spe[1]
        self.pending_oom = None
        self.restarting = event.name or "a remedy"

    def _on_nan(self, event: Nan) -> None:
        self.nan_step = event.step

    def _on_log(self, event: Log) -> None:
        if self.ended is not None or self.died is not None:
            return  # a finished run never restarts on a stray line
        if event.restarting:
            self.restarting = event.restarting
        elif event.message.startswith(RESTART_LOG_PREFIX):  # a run recorded by an older worker
            self.restarting = event.message[len(RESTART_LOG_PREFIX) :].split(":")[0]

    def _on_terminal(self, event: Finished | Failed) -> None:
        self.ended = event
        self.pending_oom = self.restarting = None
        self.paused = self.building = False

    def _on_worker_exit(self, event: WorkerExit) -> None:
        if not event.final_event:
            # The worker died before its own final event: an older "finished" or
            # "failed" (of the run it resumed) no longer describes the run.
            self.died, self.ended = event, None
            self.pending_oom = self.restarting = None
            self.building = False

    def restart_requested(self, remedy: str) -> None:
        """The worker accepted ``remedy``: it checkpoints and restarts with it (its events follow)."""
        if self.ended is None and self.died is None:
            self.restarting, self.pending_oom = remedy, None

    # -- what the facts say -----------------------------------------------------

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`: the events, combined with ``liveness`` when it is known."""
        if isinstance(self.ended, Failed):
            return "failed"
        if isinstance(self.ended, Finished):
            # A terminal event decides, even while the worker is still exiting.
            return finished_status(self.ended.reason)
        if self.liveness is not None:
            if self.liveness.pid is None:
                return "crashed"
            if self.liveness.hung:
                return "hung"
        elif self.died is not None:
            return "crashed"
        if self.pending_oom is not None:
            return "waiting"
        if self.paused:
            return "paused"
        return "stalled" if self._stalled() else "running"

    def steady_step_seconds(self) -> float | None:
        """Wall seconds a step takes in this worker's steady state (saves included, validations not)."""
        if self.rate_origin is None:
            return None
        origin_time, origin_step = self.rate_origin
        steps = self.step - origin_step
        # Up to the last epoch end when it came after the last step: the validation just
        # taken out lies inside the span (before the next step, it would be taken twice).
        until = max(self.last_step_at, self.epoch_ends_seen[1] if self.epoch_ends_seen else 0.0)
        seconds = until - origin_time - self.validated_since_origin
        if steps <= 0 or seconds <= 0:
            return None
        return seconds / steps

    def stall_seconds(self) -> float:
        """How long without a step makes this run stalled."""
        floor = _env_seconds(STALL_MIN_ENV, STALL_MIN_SECONDS)
        step = self.steady_step_seconds() or self.step_time or 0.0
        return max(floor, STALL_STEP_FACTOR * step)

    def _stalled(self) -> bool:
        if self.observed_at is None or not self.stepped_since_start or self.restarting is not None:
            return False  # before the first step a worker may compile for minutes: not judged
        return self.observed_at - self.last_step_at > self.stall_seconds()

    @property
    def live(self) -> bool:
        """True while a worker runs the run and takes commands."""
        return self.status in LIVE_STATUSES

    @property
    def phase(self) -> str:
        """One of :data:`PHASES`."""
        if not self.live:
            return "ended"
        if self.restarting is not None:
            return "restarting"
        if self.pending_oom is not None:
            return "waiting"
        if self.paused:
            return "paused"
        if self.building:
            return "building"
        if not self.starts:
            return "starting"
        if not self.stepped_since_start:
            return "loading"
        if self.steps_per_epoch and self.step - self.epoch_end_step >= self.steps_per_epoch:
            return "validating"
        return "training"

    @property
    def pid(self) -> int | None:
        """The worker's pid: the live one when liveness is known, else the last that started."""
        return self.liveness.pid if self.liveness is not None else self.worker_pid

    @property
    def signal(self) -> str | None:
        """The signal that killed a crashed run's worker, when its supervisor saw it."""
        return self.died.signal if self.died is not None and self.status == "crashed" else None

    @property
    def reason(self) -> str:
        """Why the run ended, waits or restarts, in one line; empty when it just trains."""
        status = self.status
        if isinstance(self.ended, Failed):
            return self.ended.error or "the run failed"
        if isinstance(self.ended, Finished) and status == "stopped":
            return "stopped by request" if self.ended.reason == "stopped" else self.ended.reason
        if status == "crashed":
            return self._crash_reason()
        if status == "hung":
            return "the worker holds the run but stopped its heartbeat (hung)"
        if status == "stalled":
            idle = (self.observed_at or 0.0) - self.last_step_at
            step = self.steady_step_seconds() or self.step_time or 0.0
            return f"no step for {idle:.0f} s (a step takes {step:.2f} s); see `convdeck ctl {self.run_id} stacks`"
        if status == "pruned":
            return "pruned: the sweep's pruner stopped it (its checkpoint is kept)"
        if self.restarting is not None:
            return f"restarting with {self.restarting} from the last checkpoint"
        if self.pending_oom is not None:
            return f"out of memory at step {_or_unknown(self.pending_oom.step)}"
        if self.nan_step is not None:
            return f"loss became NaN at step {self.nan_step}"
        return ""

    def _crash_reason(self) -> str:
        if self.died is not None and (self.died.message or self.died.suggestion):
            return self.died.message or self.died.suggestion
        said = f"; its log ends: {self.last_words}" if self.last_words else ""
        return "the worker died without a last event (see worker.log)" + said

    @property
    def model(self) -> str:
        """The model as it trains now: ``lenet5``, ``resnet [2,2,2,2]``, ``vgg16``."""
        model = _section(self.config, "model")
        arch = str(model.get("arch") or "?")
        if arch == "resnet" and isinstance(model.get("blocks"), list):
            return f"resnet [{','.join(map(str, model['blocks']))}]"
        if arch == "vgg" and model.get("depth"):
            return f"vgg{model['depth']}"
        return arch

    @property
    def val_loss(self) -> float | None:
        return self.last_epoch.val_loss if self.last_epoch is not None else None

    @property
    def val_accuracy(self) -> float | None:
        """The last epoch's validation accuracy."""
        return self.last_epoch.val_accuracy if self.last_epoch is not None else None

    @property
    def final(self) -> Finished | None:
        """The ``finished`` event that ended the run, if it did."""
        return self.ended if isinstance(self.ended, Finished) else None

    @property
    def failure(self) -> Failed | None:
        """The ``failed`` event that ended the run, if it did."""
        return self.ended if isinstance(self.ended, Failed) else None

    @property
    def resumes(self) -> int:
        """How many times a worker took the run over (after a stop, a crash or a remedy)."""
        return max(0, self.starts - 1)

    def remedies_offered(self) -> list[RemedyOffer]:
        """The remedies the pending OOM offers, each with its key (empty if none waits)."""
        if self.pending_oom is None:
            return []
        return [_offer(remedy) for remedy in self.pending_oom.remedies]

    def steps_left(self) -> int | None:
        """Steps to the end, when the totals are known.

        Counted in epochs left, not from the step number: a remedy that halves
        the batch doubles the steps of every epoch still to come.
        """
        if not (self.steps_per_epoch and self.epochs):
            return None
        into_epoch = max(0, self.step - self.epoch_end_step)
        return max(0, (self.epochs - self.epochs_done) * self.steps_per_epoch - into_epoch)

    @property
    def total_steps(self) -> int | None:
        """The step the run will end at, as far as is known now."""
        left = self.steps_left()
        return None if left is None else self.step + left

    def eta_seconds(self) -> float | None:
        """Seconds left, measured on this worker's wall clock (a remedy restart measures anew).

        Once the worker has ended two epochs: the epochs left at the time
        between its epoch ends (steps, validation and saves together; the
        first epoch, which traced, is left out). Before that: the steps left
        at the steady time per step (from its first step line, so tracing is
        left out, validations taken out) plus a validation per epoch left at
        the last one's time, the first one's included, however long: the
        worker traces the evaluation before its first step, so no validation
        pays for a trace (a cap at an epoch's training once stood in for
        that, and priced a long validation set's steady time too low).
        """
        left = self.steps_left()
        if left is None:
            return None
        by_epochs = self._eta_by_epochs()
        if by_epochs is not None:
            return by_epochs
        per_step = self.steady_step_seconds() or self.step_time
        if not per_step or not math.isfinite(per_step):
            return None
        validations = (self.epochs or 0) - self.epochs_done
        return left * per_step + max(0, validations) * (self.validation_seconds or 0.0)

    def _eta_by_epochs(self) -> float | None:
        """Once this worker ended two epochs: whole epochs (steps, validation, saves) at their wall time."""
        if self.epoch_ends_seen is None or not self.epochs:
            return None
        first, last, count = self.epoch_ends_seen
        if count < 2 or last <= first:
            return None
        per_epoch = (last - first) / (count - 1)
        into_epoch = max(0.0, self.last_step_at - last) if self.last_step_at > last else 0.0
        return max(0.0, (self.epochs - self.epochs_done) * per_epoch - into_epoch)

    def elapsed_seconds(self) -> float:
        """From the first start to the last event."""
        return max(0.0, self.last_time - self.started) if self.started else 0.0

    # -- as data ------------------------------------------------------------------

    def as_json(self) -> dict:
        """What `convdeck runs --json` prints for the run (NaN and infinities as null)."""
        return _strict_json({
            "run_id": self.run_id,
            "run_dir": str(self.run_dir) if self.run_dir is not None else None,
            "preset": self.preset,
            "model": self.model,
            "revision": self.revision,
            "status": self.status,
            "phase": self.phase,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "last_loss": self.last_loss,
            "val_accuracy": self.val_accuracy,
            "best_val_accuracy": self.best_val_accuracy,
            "images_per_sec": self.images_per_sec,
            "eta_seconds": self.eta_seconds(),
            "started": self.started,
            "elapsed_seconds": self.elapsed_seconds(),
            "reason": self.reason,
            "pid": self.pid,
            "signal": self.signal,
            "unreadable_lines": self.unreadable_lines,
        })

    def metrics_json(self, strict: bool = True) -> dict:
        """The figures `convdeck show --json` prints under ``metrics``.

        Args:
            strict: NaN and infinities as null, so strict JSON parsers read it.
        """
        last_step = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": self.last_loss,
            "accuracy": self.last_accuracy,
            "learning_rate": self.learning_rate,
            "images_per_sec": self.images_per_sec,
        }
        best = None
        if self.best_val_accuracy is not None:
            best = {"val_accuracy": self.best_val_accuracy, "epoch": self.best_epoch}
        failure = self.failure
        figures = {
                "last_step": _present(last_step) if self.last_loss is not None else None,
                "last_epoch": _event_fields(self.last_epoch),
                "best": best,
                "final": _event_fields(self.final),
                "error": failure.error if failure else None,
                "traceback_path": failure.traceback_path if failure else None,
                "checkpoint": _event_fields(self.checkpoint),
                "resumes": self.resumes,
                "remedies": list(self.remedies),
                "revision": self.revision,
                "unreadable_lines": self.unreadable_lines,
            }
        return _strict_json(figures) if strict else figures


_HANDLERS: dict[type, Any] = {
    RunStarted: RunFacts._on_run_started,
    Building: RunFacts._on_building,
    Step: RunFacts._on_step,
    EpochEnd: RunFacts._on_epoch_end,
    Checkpoint: RunFacts._on_checkpoint,
    Paused: RunFacts._on_paused,
    Resumed: RunFacts._on_resumed,
    Oom: RunFacts._on_oom,
    RemedyApplied: RunFacts._on_remedy_applied,
    Nan: RunFacts._on_nan,
    Log: RunFacts._on_log,
    Finished: RunFacts._on_terminal,
    Failed: RunFacts._on_terminal,
    WorkerExit: RunFacts._on_worker_exit,
}


# -- reading a whole events file -------------------------------------------------------


class LogFolder:
    """Folds the raw bytes of an events file into :class:`RunFacts`, in pieces of any size.

    Step lines, the bulk of a long run, are recognised by their start and
    parsed only when they are the last before another event or the end, or
    the first after a worker started (the steady rate is measured from it):
    a million-step run folds in a fraction of a second; steps skipped so are
    not checked. Every other line is parsed; one that is torn, garbage or
    does not fit its type is counted in ``unreadable_lines``.
    """

    def __init__(self, facts: RunFacts | None = None) -> None:
        self.facts = facts if facts is not None else RunFacts()
        self._rest = b""
        # The last step line not folded yet, and the one before it: a torn last
        # step (a crash mid-write) then still leaves the step before it to fold.
        self._pending: bytes | None = None
        self._before: bytes | None = None
        self._first_step_due = True  # the file's first step starts a rate too (an old run's, say)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the file; a line is folded once its newline comes."""
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        # The lines that are not steps, found in one tight pass: a few in a million.
        others = [i for i, line in enumerate(lines) if not line.startswith(STEP_LINE_PREFIX)]
        first = 0
        for index in others:
            self._keep_last_steps(lines, first, index)
            if lines[index].strip():
                self._fold_pending()
                self._fold_line(lines[index])
            first = index + 1
        self._keep_last_steps(lines, first, len(lines))

    def _keep_last_steps(self, lines: list[bytes], first: int, end: int) -> None:
        """``lines[first:end]`` are step lines: keep the last two of them, unparsed."""
        if end > first and self._first_step_due:
            self._fold_line(lines[first])  # a worker's first step: where its steady rate starts
            first += 1
        if end - first >= 2:
            self._before, self._pending = lines[end - 2], lines[end - 1]
        elif end - first == 1:
            self._before, self._pending = self._pending, lines[first]

    def close(self) -> RunFacts:
        """Fold what is left; an unterminated last line counts if it is a whole event."""
        rest, self._rest = self._rest, b""
        event = protocol.parse(rest) if rest.strip() else None
        if event is None and rest.strip():
            self.facts.unreadable_lines += 1  # torn by a crash mid-write
        self._fold_pending()
        if event is not None:
            self.facts.fold(event)
        return self.facts

    def _fold_pending(self) -> None:
        pending, before = self._pending, self._before
        self._pending = self._before = None
        if pending is None:
            return
        event = protocol.parse(pending)
        if event is None:
            self.facts.unreadable_lines += 1
            event = protocol.parse(before) if before is not None else None
        if event is not None:
            self.facts.fold(event)

    def _fold_line(self, line: bytes) -> None:
        event = protocol.parse(line)
        if event is None:
            self.facts.unreadable_lines += 1
        else:
            self.facts.fold(event)
        self._first_step_due = isinstance(event, RunStarted) or (self._first_step_due and not isinstance(event, Step))


def read_facts(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> RunFacts:
    """The facts of one events file, read a chunk at a time (memory flat in its length)."""
    folder = LogFolder()
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return folder.close()
    with handle:
        while chunk := handle.read(chunk_bytes):
            folder.feed(chunk)
    return folder.close()


# -- helpers ----------------------------------------------------------------------------


def _offer(remedy: RemedyOffer | str) -> RemedyOffer:
    if isinstance(remedy, RemedyOffer):
        if remedy.key:
            return remedy
        name = remedy.name
    else:
        name = remedy  # an older run's oom event named the remedies only
    # The catalogue knows each remedy's key (imported here: it loads pydantic).
    from engine.remedies import REMEDIES

    known = REMEDIES.get(name)
    key = known.key if known is not None else ""
    if isinstance(remedy, RemedyOffer):
        return RemedyOffer(remedy.name, key, remedy.title, remedy.effect)
    return RemedyOffer(name, key, known.title if known is not None else "")


def finished_status(reason: str) -> str:
    """The status of a run whose ``finished`` event gives ``reason``.

    ``finished`` for one that trained as asked (:data:`FINISHED_REASONS`), ``pruned``
    for a sweep's pruned trial, and ``stopped`` for the rest: a person's stop, or a
    policy that ended it before it could finish (reason ``nan``).
    """
    if reason in FINISHED_REASONS:
        return "finished"
    return "pruned" if reason == PRUNED_REASON else "stopped"


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def _section(config: dict, name: str) -> dict:
    section = config.get(name)
    return section if isinstance(section, dict) else {}


def _with_changes(config: dict, changes: dict[str, list[Any]]) -> dict:
    """``config`` with a remedy's changes (``{"model.arch": [old, new]}``) applied, as a copy."""
    updated = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for dotted, (_, new) in changes.items():
        section, _, name = dotted.rpartition(".")
        if not section:
            # A bare field name: the section that has it.
            section = next((s for s, v in updated.items() if isinstance(v, dict) and name in v), "")
        if section and isinstance(updated.setdefault(section, {}), dict):
            updated[section][name] = new
    return updated


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _float(value: float | list | None, default: float | None) -> float | None:
    return value if isinstance(value, float) else default


def _or_unknown(value: Any) -> str:
    return "?" if value is None else str(value)


def _json_number(value: float | None) -> float | None:
    """NaN and infinities as null: JSON output must stay readable by strict parsers."""
    return value if value is None or math.isfinite(value) else None


def _event_fields(event: Event | None) -> dict | None:
    if event is None:
        return None
    data = protocol.to_dict(event)
    data.pop("type")
    data.pop("time")
    return data


def _present(values: dict) -> dict:
    return {name: value for name, value in values.items() if value is not None}


def _strict_json(value: Any) -> Any:
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value
