"""What the app needs from the engine, and the real engine behind it.

The app talks to runs only through this interface, so tests hand it a fake
(:mod:`tests.fake_engine`) and the real one imports ``engine.presets`` and
``engine.run.client`` lazily, off the UI thread, on first use. Neither imports
TensorFlow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.run.facts import RunFacts
    from engine.run.protocol import Event
    from engine.run.warm import WarmSlot


class RunLink(Protocol):
    """One run, live or finished (``engine.run.client.RunHandle``; ``tests.fake_engine.FakeRun``)."""

    run_id: str
    run_dir: Path
    unreadable_lines: int
    """Lines of the run's events that ``events`` skipped (torn, garbage, wrong-typed)."""

    def config(self) -> RunConfig: ...

    def summary(self) -> RunFacts:
        """The run's facts from its whole events file, and its liveness: once, on attach."""
        ...

    def pid(self) -> int | None:
        """The live worker's pid, else None (cheap: the app polls it)."""
        ...

    def last_log_line(self) -> str:
        """The end of worker.log, to say why a worker died without a last event."""
        ...

    def events(
        self,
        from_start: bool = True,
        poll_interval: float = 0.2,
        *,
        history_steps: int | None = None,
    ) -> AsyncIterator[list[Event]]:
        """The history (about ``history_steps`` step events of it), then new events as they come."""
        ...

    async def command(self, command: str, timeout: float = 5.0, **args: Any) -> dict: ...


class Engine(Protocol):
    """Presets and runs, as the app uses them."""

    def list_presets(self) -> list[Any]: ...

    def save_user_preset(self, name: str, config: RunConfig) -> Path: ...

    async def start_run(self, config: RunConfig) -> RunLink: ...

    def find_run(self, ref: str | None) -> RunLink: ...

    def list_runs(self) -> list[RunFacts]: ...

    def read_events(self, run: RunLink) -> Iterable[Event]: ...

    def clock(self) -> float:
        """Now, on the clock the runs' event times are on (a stall is judged against it)."""
        ...

    def find_learning_rate(self, config: RunConfig, steps: int, start: float, end: float, *, on_point, on_start):
        """The learning-rate range test (engine.run.lr_find.find_learning_rate's shape)."""
        ...

    def warm_up(self) -> None:
        """Get a worker ready for the next :meth:`start_run` (TensorFlow loaded, no device
        touched), and keep one ready after each start; returns at once."""
        ...

    def close(self) -> None:
        """Let go of what the engine holds for later starts (the warm worker); live runs go on."""
        ...


class RealEngine:
    """The engine of this install: ``engine.presets`` and ``engine.run.client``.

    Args:
        home: the convdeck home (``$CONVDECK_HOME`` when None).
    """

    def __init__(self, home: Path | None = None) -> None:
        self.home = home
        self.warm: WarmSlot | None = None
        """The warm worker for the next start, once :meth:`warm_up` asked for one."""

    def list_presets(self) -> list[Any]:
        from engine import presets

        return presets.list_presets(home=self.home)

    def save_user_preset(self, name: str, config: RunConfig) -> Path:
        from engine import presets

        return presets.save_user_preset(name, config, home=self.home)

    async def start_run(self, config: RunConfig) -> RunLink:
        from engine.run import client

        if self.warm is None:
            return await client.start_run(config, home=self.home)
        warm = self.warm.take()
        try:
            run = await client.start_run(config, home=self.home, warm=warm)
        finally:
            self.warm.put_back(warm)  # kept if the start failed before the hand-off
        # A used one is replaced, once the run it took has started.
        threading.Thread(target=self.warm.fill_once_running, args=(run,), name="warm-worker", daemon=True).start()
        return run

    def warm_up(self) -> None:
        if self.warm is None:
            from engine.run.warm import WarmSlot

            self.warm = WarmSlot()
        # Spawning takes tens of milliseconds: not on the caller's (the UI's) thread.
        threading.Thread(target=self.warm.fill, name="warm-worker", daemon=True).start()

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()

    def find_run(self, ref: str | None) -> RunLink:
        from engine.run import client

        return client.find_run(ref, home=self.home)

    def list_runs(self) -> list[RunFacts]:
        from engine.run import client

        return client.list_runs(home=self.home)

    def read_events(self, run: RunLink) -> Iterable[Event]:
        from engine.run.events import EVENTS_FILE, iter_events

        return iter_events(Path(run.run_dir) / EVENTS_FILE)

    def clock(self) -> float:
        return time.time()

    def find_learning_rate(self, config: RunConfig, steps: int, start: float, end: float, *, on_point, on_start):
        from engine.run.lr_find import find_learning_rate

        return find_learning_rate(config, steps, start, end, on_point=on_point, on_start=on_start)
