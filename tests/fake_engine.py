"""A scripted engine for tests, snapshots and benchmarks: no worker, no TensorFlow.

:class:`FakeEngine` lists presets and starts :class:`FakeRun` objects that
record every command and emit the events a real worker would reply with
(``pause`` gives ``paused``; ``remedy`` gives the restart a worker goes
through: a ``log`` line, ``remedy_applied``, then a resumed ``run_started``).
Tests push further events with :meth:`FakeRun.feed`.

Every event is built from the declarations of :mod:`engine.run.protocol`,
as the worker's are, and what a test feeds as a plain dict or a raw line is
read through the protocol as a reader of events.jsonl reads it: a line that
does not fit is skipped and counted, never handed to the app.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.config import ConfigError, RunConfig, validate_config
from engine.remedies import applicable_remedies, apply_remedy
from engine.run import protocol
from engine.run.facts import RunFacts
from engine.run.protocol import (
    EpochEnd,
    Event,
    Finished,
    Log,
    Oom,
    Paused,
    RemedyApplied,
    RemedyOffer,
    Resumed,
    RunStarted,
    Step,
)
from engine.run.store import Liveness

LIVE = ("running", "paused", "waiting")


@dataclass
class FakePreset:
    """Shaped like ``engine.presets.PresetInfo``."""

    name: str
    description: str = ""
    path: Path = Path("/dev/null")
    source: str = "packaged"
    error: str | None = None
    raw: dict = field(default_factory=dict)
    config: RunConfig | None = None


def make_preset(name: str, description: str = "", **sections: dict) -> FakePreset:
    """A valid preset whose config is the defaults with ``sections`` laid over."""
    raw = {"name": name, "description": description, **sections}
    return FakePreset(name, description, raw=raw, config=validate_config(raw))


def default_presets() -> list[FakePreset]:
    """A small, fixed catalogue with one broken preset, for tests and snapshots."""
    return [
        make_preset(
            "alexnet-cifar10",
            "AlexNet on CIFAR-10",
            model={"arch": "alexnet"},
            data={"dataset": "tfds:cifar10"},
            train={"batch_size": 128, "epochs": 30},
        ),
        FakePreset(
            "broken-example",
            "",
            source="user",
            error="broken-example.toml: train.batch_size: Input should be greater than 0, got -4",
        ),
        make_preset(
            "lenet5-digits",
            "LeNet-5 on scikit-learn digits: seconds on a CPU",
            train={"batch_size": 64, "epochs": 5},
        ),
        make_preset(
            "resnet18-cifar10",
            "ResNet [2,2,2,2] on CIFAR-10",
            model={"arch": "resnet"},
            data={"dataset": "tfds:cifar10"},
            train={"batch_size": 256, "epochs": 30},
        ),
        make_preset(
            "vgg16-cifar10",
            "VGG-16 with batch norm on CIFAR-10",
            model={"arch": "vgg"},
            data={"dataset": "tfds:cifar10"},
            train={"batch_size": 128},
        ),
    ]


class FakeRun:
    """A run that records commands and plays scripted events.

    Args:
        run_id: its id.
        config: its config.
        history: events already in its events file when watched.
        reply_events: emit the events a worker would send for each command.
        now: the ``time`` stamped on emitted events (fixed, for snapshots).
    """

    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        history: list[Event] | None = None,
        reply_events: bool = True,
        now: float = 1_700_000_000.0,
    ) -> None:
        self.run_id = run_id
        self.run_dir = Path(f"/tmp/convdeck-fake/{run_id}")
        self._config = config
        self.history: list[Event] = list(history or [])
        self.reply_events = reply_events
        self.now = now
        self.commands: list[tuple[str, dict]] = []
        self.status = "running"
        self.command_error: str | None = None
        self.events_error: Exception | None = None
        self.unreadable_lines = 0
        self.log_tail = ""
        self._queue: asyncio.Queue[list[Event]] | None = None
        self._pending: list[list[Event]] = []

    def config(self) -> RunConfig:
        return self._config

    def summary(self) -> RunFacts:
        """The run's facts from its whole history, and whether it is live (``RunHandle.summary``)."""
        facts = RunFacts(run_id=self.run_id, run_dir=self.run_dir).apply(self.history)
        facts.unreadable_lines = self.unreadable_lines
        facts.liveness = Liveness(self.pid())
        facts.preset = facts.preset if facts.config else self._config.name
        return facts

    def pid(self) -> int | None:
        """4242 while the run is live, like ``RunHandle.pid``."""
        return 4242 if self.status in LIVE else None

    def last_log_line(self) -> str:
        return self.log_tail

    def feed(self, *events: Event | dict | str) -> None:
        """Append events to the run, seen by whoever follows it.

        An :class:`Event` goes as it is; a dict (``time`` added when missing)
        or a string is read as a line of events.jsonl: one that does not fit
        the protocol is skipped and counted in ``unreadable_lines``.
        """
        batch = []
        for item in events:
            event = item if isinstance(item, Event) else self._read(item)
            if event is None:
                self.unreadable_lines += 1
            else:
                batch.append(event)
        self.history.extend(batch)
        if self._queue is None:
            self._pending.append(batch)
        else:
            self._queue.put_nowait(batch)

    def _read(self, item: dict | str) -> Event | None:
        line = item if isinstance(item, str) else json.dumps({"time": self.now, **item})
        return protocol.parse(line)

    async def events(
        self,
        from_start: bool = True,
        poll_interval: float = 0.2,
        *,
        history_steps: int | None = None,
    ) -> AsyncIterator[list[Event]]:
        """The history in chunks (never thinned), then whatever is fed, forever."""
        if self.events_error is not None:
            raise self.events_error
        self._queue = asyncio.Queue()
        self._pending.clear()
        history = list(self.history) if from_start else []
        for start in range(0, len(history), 5000):
            yield history[start : start + 5000]
        while True:
            yield await self._queue.get()

    async def command(self, command: str, timeout: float = 5.0, **args: Any) -> dict:
        self.commands.append((command, args))
        if self.command_error:
            return {"ok": False, "error": self.command_error}
        if self.reply_events:
            self._reply(command, args)
        return {"ok": True}

    def _reply(self, command: str, args: dict) -> None:
        step = self._last_step()
        if command == "pause":
            self.status = "paused"
            self.feed(Paused(time=self.now, step=step))
        elif command == "resume":
            self.status = "running"
            self.feed(Resumed(time=self.now, step=step))
        elif command == "stop":
            self.status = "stopped"
            self.feed(Finished(time=self.now, reason="stopped", steps=step))
        elif command == "remedy":
            name = args.get("name", "")
            applied = self._remedy_event(name)
            self.feed(
                Log(
                    time=self.now,
                    message=f"applying remedy {name}: restarting the worker",
                    restarting=name,
                ),
                applied,
                self._restarted(applied.changes),
            )

    def _last_step(self) -> int:
        steps = [e.last().step for e in self.history if isinstance(e, Step)]
        return max((s for s in steps if isinstance(s, int)), default=0)

    def _restarted(self, changes: dict) -> RunStarted:
        """The ``run_started`` of the worker that takes over with a remedy applied."""
        config = self._config.model_dump(mode="json")
        for dotted, (_, new) in changes.items():
            section, _, key = dotted.partition(".")
            config[section][key] = new
        started = run_started(self.run_id, self._config, now=self.now)
        return msgspec.structs.replace(started, config=config, resumed_from_step=self._last_step())

    def _remedy_event(self, name: str) -> RemedyApplied:
        _, changes = apply_remedy(name, self._config)  # what the worker would write
        return RemedyApplied(
            time=self.now,
            name=name,
            revision=1,
            step=self._last_step(),
            changes={field: list(change) for field, change in changes.items()},
        )


class FakeEngine:
    """Presets and runs held in memory.

    Args:
        presets: the catalogue (:func:`default_presets` when None).
        runs: runs that already exist, for attach and the runs screen.
        start_history: events every started run begins with (from
            :func:`training_events` when None).
    """

    def __init__(
        self,
        presets: list[FakePreset] | None = None,
        runs: list[FakeRun] | None = None,
        start_history: list[Event] | None = None,
    ) -> None:
        self.presets = default_presets() if presets is None else presets
        self.runs = list(runs or [])
        self.start_history = start_history
        self.started: list[FakeRun] = []
        self.saved: list[tuple[str, RunConfig]] = []
        self.start_error: str | None = None
        self.now: float | None = None
        self.rate_finder = None
        """find_learning_rate's stand-in for tests of the L key (tests/test_lr_find.py's FakeDriver)."""
        """Set to move the fake world's clock (e.g. far past the last step, to make a run stalled)."""
        self.warm_ups = 0
        self.closed = 0

    def list_presets(self) -> list[FakePreset]:
        return list(self.presets)

    def find_learning_rate(self, config: RunConfig, steps: int, start: float, end: float, *, on_point, on_start):
        """The range test a test hands in (``rate_finder``), as the real one is called."""
        if self.rate_finder is None:
            raise ConfigError("this fake engine has no range test (set rate_finder)")
        return self.rate_finder(config, steps, start, end, on_point=on_point, on_start=on_start)

    def warm_up(self) -> None:
        """Counted: the app asks for a warm worker while its preset list shows."""
        self.warm_ups += 1

    def close(self) -> None:
        """Counted: the app lets go of its warm worker as it exits."""
        self.closed += 1

    def clock(self) -> float:
        """The fake world's now: its newest event, so a fake run is stalled only when a test says so."""
        if self.now is not None:
            return self.now
        times = [run.history[-1].time for run in [*self.runs, *self.started] if run.history]
        return max(times, default=1_700_000_000.0)

    def save_user_preset(self, name: str, config: RunConfig) -> Path:
        self.saved.append((name, config))
        return Path(f"/tmp/convdeck-fake/presets/{name}.toml")

    async def start_run(self, config: RunConfig) -> FakeRun:
        if self.start_error:
            raise ConfigError(self.start_error)
        run_id = f"run-{len(self.started) + 1:03d}"
        history = self.start_history
        if history is None:
            history = [run_started(run_id, config)]
        run = FakeRun(run_id, config, history=history)
        self.started.append(run)
        self.runs.append(run)
        return run

    def find_run(self, ref: str | None) -> FakeRun:
        live = [r for r in self.runs if r.status in LIVE]
        if ref is None:
            if not live:
                raise ConfigError("no live run to attach to; `convdeck runs` lists them all")
            return live[-1]
        matches = [r for r in self.runs if r.run_id.startswith(ref)]
        if len(matches) != 1:
            raise ConfigError(f"no run matches {ref!r}" if not matches else f"{ref!r} is ambiguous")
        return matches[0]

    def list_runs(self) -> list[RunFacts]:
        return [r.summary() for r in self.runs]

    def read_events(self, run: FakeRun) -> list[Event]:
        return list(run.history)


def run_started(
    run_id: str,
    config: RunConfig,
    now: float = 1_700_000_000.0,
    steps_per_epoch: int = 100,
    **fields: Any,
) -> RunStarted:
    """The first event of a run (``fields`` override or add to it)."""
    values: dict[str, Any] = {
        "run_id": run_id,
        "pid": 4242,
        "config": config.model_dump(mode="json"),
        "devices": ["/gpu:0"],
        "strategy": "one_device",
        "replicas": 1,
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.train.epochs,
        "total_steps": steps_per_epoch * config.train.epochs,
    }
    return RunStarted(time=now, **{**values, **fields})


def training_events(
    steps: int,
    start_step: int = 1,
    steps_per_epoch: int = 100,
    now: float = 1_700_000_000.0,
    step_time: float = 0.05,
) -> list[Event]:
    """Deterministic step and epoch_end events with a falling, noisy loss.

    Epochs count as the worker counts them: a step's ``epoch`` from 1, an
    ``epoch_end``'s as the number of epochs ended.
    """
    events: list[Event] = []
    for step in range(start_step, start_step + steps):
        epoch = (step - 1) // steps_per_epoch + 1
        noise = ((step * 7919) % 101) / 101 - 0.5
        loss = 2.3 * (0.985**step) + 0.05 + 0.15 * noise * (0.99**step + 0.2)
        events.append(
            Step(
                time=now + step * step_time,
                step=step,
                epoch=epoch,
                loss=round(loss, 5),
                accuracy=round(min(0.99, 1 - loss / 2.5), 4),
                learning_rate=1e-3,
                images_per_sec=1280.0,
                step_time=step_time,
            )
        )
        if step % steps_per_epoch == 0:
            events.append(
                EpochEnd(
                    time=now + step * step_time,
                    epoch=epoch,
                    step=step,
                    val_loss=round(loss * 1.1, 5),
                    val_accuracy=round(1 - loss / 2.2, 4),
                    loss=round(loss, 5),
                    accuracy=round(1 - loss / 2.5, 4),
                )
            )
    return events


def oom_event(step: int, batch_size: int = 256, now: float = 1_700_000_000.0) -> Oom:
    """An ``oom`` event offering what the worker would offer for LeNet-5 at ``batch_size``, waiting."""
    config = validate_config({"train": {"batch_size": batch_size}})
    return Oom(
        time=now,
        step=step,
        batch_size=batch_size,
        message="OOM when allocating tensor with shape[256,64,112,112]",
        remedies=[RemedyOffer(**offer) for offer in applicable_remedies(config)],
        policy="ask",
        waiting=True,
    )
