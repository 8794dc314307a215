"""A scripted engine for tests, snapshots and benchmarks: no worker, no TensorFlow.

:class:`FakeEngine` lists presets and starts :class:`FakeRun` objects that
record every command and emit the events a real worker would reply with
(``pause`` gives ``paused``; ``remedy`` gives the restart a worker goes
through: a ``log`` line, ``remedy_applied``, then a resumed ``run_started``).
Tests push further events with :meth:`FakeRun.feed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, RunConfig, validate_config
from engine.remedies import applicable_remedies, apply_remedy


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


@dataclass
class FakeSummary:
    """Shaped like ``engine.run.client.RunSummary``."""

    run_id: str
    preset: str
    status: str
    epoch: int = 0
    step: int = 0
    last_loss: float | None = None
    started: float = 0.0
    run_dir: Path = Path("/nonexistent")


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
        history: list[dict] | None = None,
        reply_events: bool = True,
        now: float = 1_700_000_000.0,
    ) -> None:
        self.run_id = run_id
        self.run_dir = Path(f"/tmp/convdeck-fake/{run_id}")
        self._config = config
        self.history = list(history or [])
        self.reply_events = reply_events
        self.now = now
        self.commands: list[tuple[str, dict]] = []
        self.status = "running"
        self.command_error: str | None = None
        self.events_error: Exception | None = None
        self._queue: asyncio.Queue[list[dict]] | None = None
        self._pending: list[list[dict]] = []

    def config(self) -> RunConfig:
        return self._config

    def summary(self) -> FakeSummary:
        return FakeSummary(self.run_id, self._config.name, self.status)

    def pid(self) -> int | None:
        """4242 while the run is live, like ``RunHandle.pid``."""
        return 4242 if self.status in ("running", "paused", "waiting") else None

    def feed(self, *events: dict) -> None:
        """Append events to the run, seen by whoever follows it."""
        batch = [{"time": self.now, **event} for event in events]
        self.history.extend(batch)
        if self._queue is None:
            self._pending.append(batch)
        else:
            self._queue.put_nowait(batch)

    async def events(
        self, from_start: bool = True, poll_interval: float = 0.2
    ) -> AsyncIterator[list[dict]]:
        """The history in chunks, then whatever is fed, forever."""
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
        if command == "pause":
            self.status = "paused"
            self.feed({"type": "paused"})
        elif command == "resume":
            self.status = "running"
            self.feed({"type": "resumed"})
        elif command == "stop":
            self.status = "stopped"
            self.feed({"type": "finished", "reason": "stopped"})
        elif command == "remedy":
            name = args.get("name", "")
            applied = self._remedy_event(name)
            self.feed(
                {
                    "type": "log",
                    "level": "info",
                    "message": f"applying remedy {name}: restarting",
                    "restarting": name,
                },
                applied,
                self._restarted(applied["changes"]),
            )

    def _restarted(self, changes: dict) -> dict:
        """The ``run_started`` of the worker that takes over with a remedy applied."""
        config = self._config.model_dump(mode="json")
        for dotted, (_, new) in changes.items():
            section, _, key = dotted.partition(".")
            config[section][key] = new
        steps = [e["step"] for e in self.history if e.get("type") == "step" and "step" in e]
        event = run_started(self.run_id, self._config, now=self.now)
        event.update(config=config, resumed_from_step=max(steps, default=0))
        return event

    def _remedy_event(self, name: str) -> dict:
        _, changes = apply_remedy(name, self._config)  # what the worker would write
        return {"type": "remedy_applied", "name": name, "changes": changes}


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
        start_history: list[dict] | None = None,
    ) -> None:
        self.presets = default_presets() if presets is None else presets
        self.runs = list(runs or [])
        self.start_history = start_history
        self.started: list[FakeRun] = []
        self.saved: list[tuple[str, RunConfig]] = []
        self.start_error: str | None = None

    def list_presets(self) -> list[FakePreset]:
        return list(self.presets)

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
        live = [r for r in self.runs if r.status in ("running", "paused", "waiting")]
        if ref is None:
            if not live:
                raise ConfigError("no live run to attach to; `convdeck runs` lists them all")
            return live[-1]
        matches = [r for r in self.runs if r.run_id.startswith(ref)]
        if len(matches) != 1:
            raise ConfigError(f"no run matches {ref!r}" if not matches else f"{ref!r} is ambiguous")
        return matches[0]

    def list_runs(self) -> list[FakeSummary]:
        return [r.summary() for r in self.runs]

    def read_events(self, run: FakeRun) -> list[dict]:
        return list(run.history)


def run_started(
    run_id: str, config: RunConfig, now: float = 1_700_000_000.0, steps_per_epoch: int = 100
) -> dict:
    """The first event of a run."""
    return {
        "type": "run_started",
        "time": now,
        "run_id": run_id,
        "pid": 4242,
        "config": config.model_dump(mode="json"),
        "devices": ["/gpu:0"],
        "strategy": "one_device",
        "replicas": 1,
        "steps_per_epoch": steps_per_epoch,
        "epochs": config.train.epochs,
    }


def training_events(
    steps: int,
    start_step: int = 1,
    steps_per_epoch: int = 100,
    now: float = 1_700_000_000.0,
    step_time: float = 0.05,
) -> list[dict]:
    """Deterministic step and epoch_end events with a falling, noisy loss."""
    events = []
    for step in range(start_step, start_step + steps):
        epoch = (step - 1) // steps_per_epoch
        noise = ((step * 7919) % 101) / 101 - 0.5
        loss = 2.3 * (0.985**step) + 0.05 + 0.15 * noise * (0.99**step + 0.2)
        events.append(
            {
                "type": "step",
                "time": now + step * step_time,
                "step": step,
                "epoch": epoch,
                "loss": round(loss, 5),
                "accuracy": round(min(0.99, 1 - loss / 2.5), 4),
                "learning_rate": 1e-3,
                "images_per_sec": 1280.0,
                "step_time": step_time,
            }
        )
        if step % steps_per_epoch == 0:
            events.append(
                {
                    "type": "epoch_end",
                    "time": now + step * step_time,
                    "epoch": epoch,
                    "val_loss": round(loss * 1.1, 5),
                    "val_accuracy": round(1 - loss / 2.2, 4),
                    "loss": round(loss, 5),
                    "accuracy": round(1 - loss / 2.5, 4),
                }
            )
    return events


def oom_event(step: int, batch_size: int = 256, now: float = 1_700_000_000.0) -> dict:
    """An ``oom`` event offering what the worker would offer for LeNet-5 at ``batch_size``."""
    config = validate_config({"train": {"batch_size": batch_size}})
    return {
        "type": "oom",
        "time": now,
        "step": step,
        "batch_size": batch_size,
        "message": "OOM when allocating tensor with shape[256,64,112,112]",
        "remedies": applicable_remedies(config),
    }
