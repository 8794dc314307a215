"""The convdeck app: pick a preset, start it, watch it train, fix an OOM with one key.

The app holds no training logic. It talks to runs only through an engine
object (:mod:`tui.engine_link`): an async event tail and control commands.
It never imports TensorFlow, so the first frame comes in well under a second.
Build it with :class:`ConvdeckApp` (tests hand it a fake engine and recorded
GPU samples) or run it with :func:`run_app`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static

from engine.gpu import GpuSource
from engine.remedies import REMEDIES
from engine.run.facts import RunFacts
from engine.run.history import RunHistory
from engine.run.protocol import (
    Event,
    Failed,
    Finished,
    Nan,
    Oom,
    RemedyApplied,
    RunStarted,
    Step,
    WorkerExit,
)
from engine.run.store import Liveness
from tui.chart_keys import ChartKeys, chart_bindings
from tui.engine_link import Engine, RunLink
from tui.messages import (
    CommandDone,
    ConfigEdited,
    PresetChosen,
    PresetHighlighted,
    PresetsLoaded,
    RunEvents,
    RunSummaryPolled,
    RunTailEnded,
    StartRequested,
)
from tui.queue_link import QueueLink
from tui.widgets.config_pane import ConfigPane
from tui.widgets.gpu_panel import GpuPanel
from tui.widgets.header import RunHeader
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_chart import SMOOTHINGS, VIEWS, LossChart
from tui.widgets.preset_list import DEFAULT_PRESET, PresetList
from tui.widgets.queue_badge import QueueBadge
from tui.widgets.remedy_bar import RemedyBar, remedy_bindings, remedy_title

if TYPE_CHECKING:  # pydantic costs ~0.1 s: the first frame does not wait for it
    from engine.config import RunConfig

MIN_WIDTH, MIN_HEIGHT = 80, 24
INGEST_CHUNK = 2000
"""Events folded in per turn of the event loop, so keys stay quick while a long run replays."""
UI_UPDATE_INTERVAL = 0.25
"""The least seconds between updates of the widgets from a run's events (see _queue_run_events)."""
CAUGHT_UP_AFTER = 0.15
"""Seconds without a new batch after which the tail has read the history (see _until_quiet)."""
URGENT_EVENTS = (Oom, Failed, Nan, Finished, RemedyApplied, RunStarted, WorkerExit)
"""Events shown at once, however soon after the last update."""

MAIN_SCREEN_ACTIONS = frozenset(
    {
        "start",
        "pause_resume",
        "stop",
        "remedy",
        "detach",
        "filter",
        "save_preset",
        "runs",
        "eval",
        "queue_preset",
        "queue",
        "smoothing",
        "log_scale",
        "x_axis",
        "view",
    }
)

HISTORY_STEPS = 20_000
"""Step events replayed when attaching to a long run: ~40 per bucket of a 512-bucket chart,
each weighted by the steps it stands for (a million-step run reaches its live tail in ~1 s)."""

def _until_shutdown(handler: Callable) -> Callable:
    """A message handler that may run while the app shuts down: missing widgets are fine then.

    Workers (presets, event tail, commands) post their messages whenever they
    finish; one may arrive after the screen is gone.
    """

    @functools.wraps(handler)
    def guarded(app: ConvdeckApp, message: Any) -> Any:
        try:
            return handler(app, message)
        except (NoMatches, ScreenStackError):
            if app.is_running:
                raise
            return None

    return guarded


class ConvdeckApp(ChartKeys, App[int]):
    """The whole TUI.

    Args:
        engine: presets and runs (the real engine when None).
        gpu_source: GPU samples (NVML when None).
        attach: a run id (or unique prefix) to watch at launch; "" for the
            newest live run; None to start on the preset list.
        gpu_interval: seconds between GPU polls.
        chart_data_interval: the least seconds between chart redraws caused by data.
        liveness_interval: seconds between checks that the watched worker is alive.
    """

    CSS_PATH = "app.tcss"
    TITLE = "convdeck"

    # | key     | action            | applies when                          |
    # |---------|-------------------|---------------------------------------|
    # | enter   | start             | no live run; a valid config           |
    # | space   | pause or resume   | a live run                            |
    # | x       | stop (confirm)    | a live run                            |
    # | (each)  | a remedy          | a live run; keys in engine.remedies   |
    # | d       | detach            | a run is shown                        |
    # | s l t v | chart settings    | always                                |
    BINDINGS = [
        Binding("enter", "start", "Start", tooltip="Start a run of the chosen preset", id="start"),
        Binding(
            "space",
            "pause_resume",
            "Pause/resume",
            tooltip="Pause or resume the run",
            id="pause-resume",
        ),
        Binding("x", "stop", "Stop", tooltip="Stop the run (asks first)", id="stop"),
        Binding("d", "detach", "Detach", tooltip="Stop watching; the run keeps going", id="detach"),
        *remedy_bindings(),  # one per remedy in engine.remedies
        Binding("question_mark,f1", "help", "Help", tooltip="Keys and how it works", id="help"),
        Binding("q", "quit_app", "Quit", tooltip="Quit (asks about a live run)", id="quit"),
        Binding("slash", "filter", "Filter", tooltip="Filter the presets", id="filter"),
        Binding(
            "ctrl+s",
            "save_preset",
            "Save preset",
            tooltip="Save the config pane as a user preset",
            id="save-preset",
        ),
        Binding("o", "runs", "Runs", tooltip="List runs, open one, overlay two", id="runs"),
        Binding("e", "eval", "Eval", show=False, tooltip="Confusion matrix, per-class figures, mistakes", id="eval"),
        Binding(
            "Q",
            "queue_preset",
            "Queue",
            tooltip="Queue the chosen preset with the config pane's values",
            id="queue-preset",
        ),
        Binding(
            "u",
            "queue",
            "Queue list",
            show=False,  # the footer has no room at 80 columns; help, the palette and Q's notice say it
            tooltip="The run queue: reorder, remove, pause",
            id="queue",
        ),
        *chart_bindings("chart", show=False),
    ]

    def __init__(
        self,
        engine: Engine | None = None,
        gpu_source: GpuSource | None = None,
        attach: str | None = None,
        gpu_interval: float = 1.0,
        chart_data_interval: float = 2.0,
        liveness_interval: float = 2.0,
    ) -> None:
        super().__init__()
        if engine is None:
            from tui.engine_link import RealEngine

            engine = RealEngine()
        if gpu_source is None:
            from engine.gpu import NvmlSource

            gpu_source = NvmlSource()
        self.engine = engine
        self.gpu_source = gpu_source
        self.attach_ref = attach
        self.gpu_interval = gpu_interval
        self.chart_data_interval = chart_data_interval
        self.liveness_interval = liveness_interval
        self.run_link: RunLink | None = None
        self.queue_link = QueueLink()
        """The run queue (tests swap in one with a fake runner start)."""
        self.state: RunFacts | None = None
        """The watched run's facts, as shown (see watch_run: a snapshot until the history is in)."""
        self.history: RunHistory | None = None
        """The watched run's chart data."""
        self._folding: RunFacts | None = None
        """The facts the event tail folds; shown once the history is in."""
        self._attaching = attach is not None
        self.config_error: str | None = "no preset chosen yet"
        self.presets_loaded = False
        self._liveness_in_flight = False
        self._bindings_key: tuple = ()
        self._pending_events: list = [None, [], 0]
        """[run id, notable events, step count] folded in but not yet shown."""
        self._flush_timer: Any = None
        self._last_ui_update = 0.0
        self._worker_gone_polls = 0
        self._unreadable_noted = False
        self._remedy_asked: tuple[str, int] | None = None
        """The remedy last asked for, and the run's count of worker starts then."""

    # ----------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        # The size classes before any child mounts: added later, they restyle every widget.
        self._check_size(self.size.width, self.size.height)
        # The list has the keys from the first frame, before the presets are read: Tab's
        # order is the same whenever a person starts typing. (Only this screen's focus.)
        self.screen.AUTO_FOCUS = "#preset-options"
        with Horizontal(id="top"):
            yield RunHeader(id="header")
            yield QueueBadge(id="queue-badge")
        with Horizontal(id="main"):
            with Vertical(id="side"):
                yield PresetList(id="presets")
                yield ConfigPane(id="config")
            with Vertical(id="center"):
                yield LossChart(id="chart", data_interval=self.chart_data_interval)
                yield RemedyBar(id="remedy")
                yield GpuPanel(self.gpu_source, interval=self.gpu_interval, id="gpu")
        yield LogPane(id="log")
        yield Static(id="too-small")
        yield Footer(id="footer")

    def on_mount(self) -> None:
        self.query_one(RunHeader).show_idle("reading presets…")
        self._check_size(self.size.width, self.size.height)  # the too-small message
        # Reading presets imports pydantic (~0.1 s of the GIL): after the first frame.
        self.call_after_refresh(self._load_presets)
        if self.attach_ref is not None:
            self._begin_attach(self.attach_ref or None)

    def on_resize(self, event: Any) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, width: int, height: int) -> None:
        if not self.screen_stack:
            return
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        wanted = {
            "-too-small": small,
            "-narrow": width < 110,
            "-wide": width >= 140,
            "-tall": height >= 40,
            "-short": height < 30,
        }
        screen = self.screen_stack[0]
        # One restyle for all of them: each class change alone restyles the whole screen.
        adding = [name for name, on in wanted.items() if on and not screen.has_class(name)]
        removing = [name for name, on in wanted.items() if not on and screen.has_class(name)]
        if adding:
            screen.add_class(*adding)
        if removing:
            screen.remove_class(*removing)
        if small and self.query("#too-small"):
            self.query_one("#too-small", Static).update(
                f"Terminal is {width}×{height}; convdeck needs at least {MIN_WIDTH}×{MIN_HEIGHT}.\n"
                "Enlarge the window (training goes on meanwhile)."
            )

    # ---------------------------------------------------------------- presets

    @work(thread=True, exclusive=True, group="presets", exit_on_error=False)
    def _load_presets(self) -> None:
        try:
            presets = self.engine.list_presets()
        except Exception as error:  # noqa: BLE001 - the app must open anyway
            self.post_message(PresetsLoaded([], error=f"cannot list presets: {error}"))
            return
        self.post_message(PresetsLoaded(presets))

    @on(PresetsLoaded)
    @_until_shutdown
    def _presets_loaded(self, message: PresetsLoaded) -> None:
        self.presets_loaded = True
        presets = self.query_one(PresetList)
        presets.set_presets(message.presets)
        broken = [p for p in message.presets if p.error]
        if message.error:
            self.notify(message.error, severity="error")
        if broken:
            self.query_one(LogPane).note(
                f"{len(broken)} preset(s) did not load: {', '.join(p.name for p in broken)}",
                "yellow",
            )
        if self.state is None and not self._attaching:
            self.query_one(RunHeader).show_idle()
            self.query_one("#preset-options", OptionList).focus()
        if presets.highlighted is not None:
            self.query_one(ConfigPane).show_preset(presets.highlighted)

    @on(PresetHighlighted)
    @_until_shutdown
    def _preset_highlighted(self, message: PresetHighlighted) -> None:
        if not self._live():
            self.query_one(ConfigPane).show_preset(message.preset)

    @on(PresetChosen)
    @on(StartRequested)
    def _start_requested(self, message: PresetChosen | StartRequested) -> None:
        self.action_start()

    @on(ConfigEdited)
    @_until_shutdown
    def _config_edited(self, message: ConfigEdited) -> None:
        # The footer rebuilds on every refresh: only when the answer changes.
        valid_before = self.config_error is None
        self.config_error = message.error
        if valid_before != (message.error is None):
            self._refresh_footer()

    def _refresh_footer(self) -> None:
        # Messages can arrive while the app shuts down, when there is no screen left.
        if self.screen_stack and self.is_running:
            self.refresh_bindings()

    # ------------------------------------------------------------ run control

    def _live(self) -> bool:
        return self.state is not None and self.state.live

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Which keys apply now: the footer shows only these."""
        if not self.screen_stack:
            return False
        if self.screen is not self.screen_stack[0]:
            # Another screen is on top: its own keys apply, the main screen's do not.
            return action not in MAIN_SCREEN_ACTIONS
        live = self._live()
        if action in ("pause_resume", "stop"):
            return live
        if action == "remedy":
            # A remedy restarts the worker: not while it is already restarting.
            return live and self.state.phase != "restarting"
        # While a run to attach to is looked up, the preset screen's keys do not apply yet.
        preset_keys = not live and not self._attaching
        if action in ("start", "queue_preset"):
            return preset_keys
        if action == "filter":
            return preset_keys and not isinstance(self.focused, Input)
        if action == "save_preset":
            return preset_keys and self.config_error is None
        if action == "detach":
            return self.state is not None
        return True

    def action_start(self) -> None:
        """Start the chosen preset with the config pane's values."""
        if self._live():
            self.notify("A run is live: stop (x) or detach (d) first.", severity="warning")
            return
        pane = self.query_one(ConfigPane)
        config = pane.validate() if pane.preset is not None else None
        if config is None:
            reason = pane.error or "no preset chosen yet"
            self.notify(f"Not started: {reason}", severity="error", timeout=6)
            self.query_one(LogPane).note(f"not started: {reason}", "red")
            return
        self._start(config)

    @work(exclusive=True, group="start", exit_on_error=False)
    async def _start(self, config: RunConfig) -> None:
        self.query_one(RunHeader).show_idle(f"starting {config.name}…")
        try:
            run = await self.engine.start_run(config)
        except Exception as error:  # noqa: BLE001 - a failed start is a message, not a crash
            self.query_one(RunHeader).show_idle("the run did not start")
            self.notify(f"Could not start: {error}", severity="error", timeout=8)
            self.query_one(LogPane).note(f"could not start: {error}", "red")
            return
        self.watch_run(run, preset=config.name)

    def _begin_attach(self, ref: str | None) -> None:
        """Look the run up and read its facts (a thread); until then no preset keys apply."""
        self._attaching = True
        self.query_one(RunHeader).show_idle(f"attaching to {ref or 'the newest live run'}…")
        self._refresh_footer()
        self._attach(ref)

    @work(thread=True, exclusive=True, group="attach", exit_on_error=False)
    def _attach(self, ref: str | None) -> None:
        try:
            run = self.engine.find_run(ref)
            # The run's facts from its whole file (a fraction of a second for a million
            # steps): shown at once, while the tail replays the history for the chart.
            snapshot = run.summary()
        except Exception as error:  # noqa: BLE001 - say it and stay on the preset list
            self.call_from_thread(self._attach_failed, str(error))
            return
        self.call_from_thread(self.watch_run, run, snapshot=snapshot)

    def _attach_failed(self, error: str) -> None:
        self._attaching = False
        self.notify(error, severity="error", timeout=8)
        self.query_one(LogPane).note(f"attach: {error}", "red")
        self._show_state()  # the run watched before, or the preset list's line
        self._refresh_footer()

    def watch_run(self, run: RunLink, preset: str = "", snapshot: RunFacts | None = None) -> None:
        """Show ``run``: its history first, then follow it live.

        Args:
            run: the run.
            preset: its preset, for a run just started here.
            snapshot: the run's facts read at once, shown until the tail has read
                the history (then the tail's own fold, which equals it, takes over).
        """
        self._attaching = False
        self.run_link = run
        self._folding = RunFacts(run_id=run.run_id, preset=preset or "?")
        self.state = snapshot if snapshot is not None else self._folding
        self.history = RunHistory()
        self._pending_events[:] = [run.run_id, [], 0]
        self._worker_gone_polls = 0
        self._unreadable_noted = False
        chart = self.query_one(LossChart)
        chart.hold = True  # redrawing a history half read is wasted: the tail says when it is done
        chart.set_history(self.history)
        if preset:  # just started here: its worker is loading TensorFlow
            self._update_placeholder()
        else:
            chart.set_placeholder(f"Reading {run.run_id}…")
        log = self.query_one(LogPane)
        log.clear()
        log.start_time = None
        self.query_one(RemedyBar).close()
        self.query_one(GpuPanel).pids = (self.state.pid,) if self.state.pid else ()
        self._show_state()
        self._tail(run)
        self.query_one(LossChart).focus()
        self.set_timer(self.liveness_interval, self._check_liveness)

    @work(exclusive=True, group="tail", exit_on_error=False)
    async def _tail(self, run: RunLink) -> None:
        """Fold the run's events into its state, a chunk per turn of the event loop.

        It follows the run after it ends too: a run stopped and later resumed
        (``convdeck resume``) goes on in the same events file.
        """
        facts, history = self._folding, self.history
        try:
            async for batch in _until_quiet(_event_stream(run), CAUGHT_UP_AFTER):
                if batch is None:
                    self._caught_up()
                    continue
                for start in range(0, len(batch), INGEST_CHUNK):
                    chunk = batch[start : start + INGEST_CHUNK]
                    if run is not self.run_link:
                        return
                    facts.apply(chunk)
                    facts.unreadable_lines = run.unreadable_lines
                    history.ingest(chunk)
                    notable = [event for event in chunk if not isinstance(event, Step)]
                    self._queue_run_events(run.run_id, notable, len(chunk) - len(notable))
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a broken tail is shown, never fatal
            self._flush_run_events()
            self.post_message(RunTailEnded(run.run_id, error=f"reading events failed: {error}"))
            return
        self._flush_run_events()
        self.post_message(RunTailEnded(run.run_id))

    def _caught_up(self) -> None:
        """The history is read: show it all now (the chart waited for this, see LossChart.hold)."""
        folded, shown = self._folding, self.state
        if folded is not None and shown is not None and folded is not shown:
            # The fold of the whole history: the same facts as the snapshot, and live from now.
            folded.liveness, folded.last_words = shown.liveness, shown.last_words
            self.state = folded
        self._flush_run_events()
        chart = self.query_one(LossChart)
        chart.hold = False
        chart.mark_dirty(urgent=True)

    def _queue_run_events(self, run_id: str, notable: list[Event], steps: int) -> None:
        """Tell the widgets about folded events, at most every UI_UPDATE_INTERVAL seconds.

        A long history arrives in hundreds of batches; updating the screen for
        each would cost more than reading them. An OOM or a failure shows at once.
        """
        pending = self._pending_events
        if pending[0] != run_id:
            pending[:] = [run_id, [], 0]
        pending[1].extend(notable)
        pending[2] += steps
        wait = UI_UPDATE_INTERVAL - (time.monotonic() - self._last_ui_update)
        if wait <= 0 or any(isinstance(e, URGENT_EVENTS) for e in notable):
            self._flush_run_events()
        elif self._flush_timer is None:
            self._flush_timer = self.set_timer(wait, self._flush_run_events)

    def _flush_run_events(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.stop()
            self._flush_timer = None
        run_id, notable, steps = self._pending_events
        if run_id is None or not (notable or steps):
            return
        self._pending_events[:] = [run_id, [], 0]
        self._last_ui_update = time.monotonic()
        self.post_message(RunEvents(run_id, notable, steps))

    @on(RunEvents)
    @_until_shutdown
    def _run_events(self, message: RunEvents) -> None:
        if self.state is None or message.run_id != self.state.run_id:
            return
        if message.steps:
            self.query_one(LossChart).mark_dirty()
        if message.notable:
            self._notable_events(message.notable)
        self._show_state()
        self._update_placeholder()

    def _update_placeholder(self) -> None:
        """What the chart says before the watched run's first step."""
        state = self.state
        if state is None:
            text = "No run yet. Pick a preset and press Enter."
        elif state.phase in ("starting", "restarting"):
            text = f"{_name(state)}: the worker is starting (TensorFlow loads first)…"
        elif state.live:
            text = f"{_name(state)}: waiting for the first step…"
        else:
            text = f"No steps: the run {state.status}" + (
                f": {state.reason}" if state.reason else "."
            )
        self.query_one(LossChart).set_placeholder(text)

    def _notable_events(self, events: list[Event]) -> None:
        state = self.state
        self.query_one(LogPane).add_events(events)
        self.query_one(LossChart).mark_dirty()
        if state.pid:
            self.query_one(GpuPanel).pids = (state.pid,)
        if any(isinstance(e, (RunStarted, RemedyApplied)) for e in events) and state.config:
            self.query_one(ConfigPane).show_live(_name(state), state.config)
        if state.pending_oom is not None:
            self.query_one(RemedyBar).offer(state.pending_oom, state.remedies_offered())
            self.bell()
        else:
            self.query_one(RemedyBar).close()
        if any(isinstance(e, Failed) for e in events) and state.status == "failed":
            self.notify(f"Run failed: {state.reason}", severity="error", timeout=15)
        if any(isinstance(e, Nan) for e in events):
            self.notify(state.reason or "loss is NaN", severity="warning", timeout=10)
        self._note_unreadable()

    def _note_unreadable(self) -> None:
        """Say once that lines of the run's events were skipped (torn, garbage, wrong-typed)."""
        count = self.state.unreadable_lines if self.state is not None else 0
        if count and not self._unreadable_noted:
            self._unreadable_noted = True
            self.query_one(LogPane).note(
                f"{count} torn, garbage or wrong-typed line(s) of events.jsonl skipped", "yellow"
            )

    @on(RunTailEnded)
    @_until_shutdown
    def _tail_ended(self, message: RunTailEnded) -> None:
        if self.state is None or message.run_id != self.state.run_id:
            return
        if message.error:
            self.query_one(LogPane).note(message.error, "red")
            self.notify(message.error, severity="error")
        self._show_state()

    def _check_liveness(self) -> None:
        if self._live() and not self._liveness_in_flight and self.run_link is not None:
            self._liveness_in_flight = True
            self._poll_summary(self.run_link)

    @work(thread=True, group="liveness", exit_on_error=False)
    def _poll_summary(self, run: RunLink) -> None:
        try:
            status, reason, pid = _liveness(run)
        except Exception as error:  # noqa: BLE001 - unknown, not dead
            status, reason, pid = None, str(error), None
        self.post_message(RunSummaryPolled(run.run_id, status, reason, pid))

    def _set_liveness(self, liveness: Liveness, last_words: str = "") -> None:
        for facts in self._all_facts():
            facts.liveness, facts.last_words = liveness, last_words
        self._observe()

    def _all_facts(self) -> list[RunFacts]:
        return list({id(f): f for f in (self.state, self._folding) if f is not None}.values())

    def _observe(self) -> None:
        """Judge a stall at this moment (no step for far longer than steps take); redraw if it changed."""
        before = self.state.status if self.state is not None else None
        now = self.engine.clock()
        for facts in self._all_facts():
            facts.observed_at = now
        if self.state is not None and self.state.status != before:
            self._show_state()

    @on(RunSummaryPolled)
    @_until_shutdown
    def _summary_polled(self, message: RunSummaryPolled) -> None:
        self._liveness_in_flight = False
        state = self.state
        if state is None or message.run_id != state.run_id:
            return
        if message.pid:
            if state.liveness is None or state.liveness.pid != message.pid:
                self._set_liveness(Liveness(message.pid))
                self.query_one(GpuPanel).pids = (message.pid,)
        self._observe()
        gone = message.status == "gone" and state.live
        self._worker_gone_polls = self._worker_gone_polls + 1 if gone else 0
        # Gone twice in a row: the tail has had a poll's time to read its last events.
        if self._worker_gone_polls >= 2:
            self._set_liveness(Liveness(), message.reason or "")
            self.query_one(RemedyBar).close()
            self.query_one(LogPane).note(f"CRASHED: {state.reason}", "bold red")
            self.notify(f"Run {state.run_id} crashed: {state.reason}", severity="error", timeout=15)
            self._show_state()
            self._update_placeholder()
        if state.live:
            self.set_timer(self.liveness_interval, self._check_liveness)

    def _show_state(self) -> None:
        state = self.state
        header = self.query_one(RunHeader)
        if state is None:
            header.show_idle()
        else:
            header.show_run(state)
        live = self._live()
        screen = self.screen_stack[0]
        screen.set_class(live, "-watching")
        screen.set_class(state is not None and state.status == "waiting", "-waiting")
        pane = self.query_one(ConfigPane)
        pane.disabled = live
        if not live and pane.has_class("-live"):
            highlighted = self.query_one(PresetList).highlighted
            if highlighted is not None:
                pane.show_preset(highlighted)
        key = (state.status if state else None, state.phase if state else None, live)
        if key != self._bindings_key:
            self._bindings_key = key
            self._refresh_footer()

    # --------------------------------------------------------------- commands

    def send(self, command: str, **args: Any) -> None:
        """Send a control command to the watched run; the reply comes as CommandDone."""
        if self.run_link is not None:
            self._send(self.run_link, command, args)

    @work(group="command", exit_on_error=False)
    async def _send(self, run: RunLink, command: str, args: dict) -> None:
        try:
            reply = await run.command(command, **args)
        except Exception as error:  # noqa: BLE001 - the engine promises not to raise; be sure
            reply = {"ok": False, "error": str(error)}
        reply = reply if isinstance(reply, dict) else {"ok": False}
        self.post_message(CommandDone(command, reply, args))

    @on(CommandDone)
    @_until_shutdown
    def _command_done(self, message: CommandDone) -> None:
        if not message.reply.get("ok"):
            error = message.reply.get("error") or "no reply"
            self.notify(f"{message.command}: {error}", severity="error")
            self.query_one(LogPane).note(f"{message.command} refused: {error}", "red")
            return
        state = self.state
        asked = self._remedy_asked
        if message.command == "remedy" and state is not None and state.live and asked:
            if state.starts != asked[1]:
                return  # the restart's own events came first: nothing left to announce
            # The worker checkpoints and restarts with the remedy; its events follow.
            for facts in {id(f): f for f in (state, self._folding) if f is not None}.values():
                facts.restart_requested(asked[0])
            self.query_one(RemedyBar).close()
            self._show_state()
            self._update_placeholder()

    def action_pause_resume(self) -> None:
        """Pause a running run, resume a paused one."""
        if self.state is not None:
            self.send("resume" if self.state.status == "paused" else "pause")

    def action_stop(self) -> None:
        """Ask, then stop the run (it checkpoints first)."""
        from tui.screens.confirm_stop import ConfirmStopScreen

        if self.state is None:
            return

        def stop(confirmed: bool | None) -> None:
            if confirmed:
                self.send("stop")
                self.query_one(LogPane).note("stopping (checkpoint first)…", "yellow")

        self.push_screen(ConfirmStopScreen(self.state.run_id), stop)

    def action_remedy(self, name: str) -> None:
        """Apply one remedy by its name in :data:`engine.remedies.REMEDIES`.

        The worker checkpoints, restarts with the remedy applied and goes on
        from the checkpoint; the chart keeps the run's history and marks the switch.
        """
        if not self._live() or self.state.phase == "restarting":
            return
        self._remedy_asked = (name, self.state.starts)
        self.send("remedy", name=name)
        self.query_one(LogPane).note(
            f"asked for remedy {name} ({remedy_title(name)}): "
            "the worker checkpoints and restarts with it",
            "yellow",
        )

    def action_detach(self) -> None:
        """Stop watching; a live run keeps training."""
        state = self.state
        if state is None:
            return
        self.workers.cancel_group(self, "tail")
        self._pending_events[:] = [None, [], 0]
        if state.live:
            self.notify(
                f"Detached from {state.run_id}; it keeps training. "
                f"`convdeck attach {state.run_id}` brings it back.",
                timeout=8,
            )
        self.run_link, self.state, self._folding, self.history = None, None, None, None
        self.query_one(RemedyBar).close()
        self.query_one(LossChart).hold = False
        self.query_one(LossChart).set_history(None)
        self.query_one(GpuPanel).pids = ()
        self._show_state()
        self._update_placeholder()
        self.query_one("#preset-options", OptionList).focus()

    def action_quit_app(self) -> None:
        """Quit; with a live run, ask whether to stop it or leave it running."""
        from tui.screens.confirm_quit import ConfirmQuitScreen

        if not self._live():
            self.exit(0)
            return

        def chosen(choice: str | None) -> None:
            if choice == "leave":
                self.exit(0)
            elif choice == "stop":
                self._stop_and_exit()

        self.push_screen(ConfirmQuitScreen(self.state.run_id), chosen)

    @work(exclusive=True, group="quit", exit_on_error=False)
    async def _stop_and_exit(self) -> None:
        if self.run_link is not None:
            try:
                reply = await self.run_link.command("stop")
            except Exception as error:  # noqa: BLE001
                reply = {"ok": False, "error": str(error)}
            if not reply.get("ok"):
                self.notify(f"stop: {reply.get('error')}", severity="error")
        self.exit(0)

    # ------------------------------------------------------------- the rest

    def action_filter(self) -> None:
        """Focus the preset filter."""
        self.query_one(PresetList).focus_filter()

    def action_save_preset(self) -> None:
        """Save the config pane as a user preset."""
        pane = self.query_one(ConfigPane)
        config, name = pane.validate(), pane.save_name()
        if config is None or not name:
            self.notify(f"Not saved: {pane.error or 'type a name in save as'}", severity="error")
            return
        self._save(name, config.model_copy(update={"name": name}))

    @work(thread=True, group="save", exit_on_error=False)
    def _save(self, name: str, config: RunConfig) -> None:
        try:
            path = self.engine.save_user_preset(name, config)
        except Exception as error:  # noqa: BLE001
            self.call_from_thread(self.notify, f"Not saved: {error}", severity="error")
            return
        self.call_from_thread(self.notify, f"Saved preset {name} to {path}")
        self._load_presets()

    def action_help(self) -> None:
        """Show the help screen."""
        from tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_runs(self) -> None:
        """Show the runs screen; the run picked there is watched."""
        from tui.screens.runs import RunsScreen

        def opened(run_id: str | None) -> None:
            if run_id and (self.state is None or run_id != self.state.run_id):
                self._begin_attach(run_id)

        self.push_screen(RunsScreen(self.engine), opened)

    def action_eval(self) -> None:
        """Show the Eval view of the run on screen (it offers to evaluate a run that has none)."""
        from tui.screens.eval import EvalScreen

        if self.run_link is None:
            self.notify("No run on screen: open one (o) or start one first.", severity="warning")
            return
        self.push_screen(EvalScreen(self.engine, self.run_link.run_id, self.run_link.run_dir))

    def action_queue_preset(self) -> None:
        """Queue the chosen preset; the config pane's changes to it go as ``--set`` overrides."""
        from tui.queue_link import overrides_between

        pane = self.query_one(ConfigPane)
        config = pane.validate() if pane.preset is not None and not self._live() else None
        if config is None:
            self.notify(f"Not queued: {pane.error or 'no preset chosen yet'}", severity="error")
            return
        self._queue_preset(pane.preset.name, overrides_between(pane.preset.config, config))

    @work(thread=True, group="queue", exit_on_error=False)
    def _queue_preset(self, preset: str, overrides: list[str]) -> None:
        try:
            entry, _ = self.queue_link.add(preset, overrides)
        except Exception as error:  # noqa: BLE001 - a ConfigError above all: one line
            self.call_from_thread(self.notify, f"Not queued: {error}", severity="error")
            return
        settings = f" with {' '.join(overrides)}" if overrides else ""
        self.call_from_thread(self.notify, f"Queued {preset}{settings} as entry {entry.id} (u lists the queue)")

    def action_queue(self) -> None:
        """Show the queue screen; a run opened there is watched."""
        from tui.screens.queue import QueueScreen

        def opened(run_id: str | None) -> None:
            if run_id and (self.state is None or run_id != self.state.run_id):
                self._attach(run_id)

        self.push_screen(QueueScreen(self.queue_link), opened)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Command palette entries: the app's actions, then Textual's own."""
        entries = [
            ("Start run", "Start the chosen preset", "start", self.action_start),
            ("Pause / resume", "Pause or resume the run", "pause_resume", self.action_pause_resume),
            ("Stop run", "Checkpoint and stop the run", "stop", self.action_stop),
            ("Detach", "Stop watching; the run keeps going", "detach", self.action_detach),
            ("Runs", "List runs, open one, overlay two", "runs", self.action_runs),
            (
                "Queue preset",
                "Queue the chosen preset with the config pane's values",
                "queue_preset",
                self.action_queue_preset,
            ),
            ("Queue", "The run queue: reorder, remove, pause", "queue", self.action_queue),
            (
                "Save preset",
                "Save the config pane as a user preset",
                "save_preset",
                self.action_save_preset,
            ),
            ("Chart: next view", f"One of {', '.join(VIEWS.values())}", "view", self.action_view),
            (
                "Chart: smoothing",
                f"Cycle {', '.join(map(str, SMOOTHINGS))}",
                "smoothing",
                self.action_smoothing,
            ),
            ("Chart: log scale", "Linear or log y axis", "log_scale", self.action_log_scale),
            ("Chart: x axis", "Step, epoch or wall time", "x_axis", self.action_x_axis),
            ("Help", "Keys and how convdeck works", "help", self.action_help),
        ]
        for name in REMEDIES:
            entries.append(
                (
                    f"Remedy: {remedy_title(name)}",
                    f"Send remedy {name} to the run",
                    "remedy",
                    lambda name=name: self.action_remedy(name),
                )
            )
        for title, help_text, action, callback in entries:
            if self.check_action(action, ()):
                yield SystemCommand(title, help_text, callback)
        yield from super().get_system_commands(screen)


def _name(facts: RunFacts) -> str:
    return facts.preset if facts.preset not in ("", "?") else facts.run_id


def _liveness(run: RunLink) -> tuple[str, str | None, int | None]:
    """Whether the run's worker lives: ("alive", None, pid) or ("gone", its last words, None).

    Never a summary: that reads the whole events file; the app's own event
    tail knows the rest.
    """
    pid = run.pid()
    if pid is not None:
        return "alive", None, pid
    return "gone", run.last_log_line() or None, None


async def _until_quiet(stream: Any, quiet: float) -> AsyncIterator[list[Event] | None]:
    """The batches of ``stream``, and one None the first time none came for ``quiet`` seconds.

    A history is read back to back; the first pause is the tail waiting for
    the file to grow: the history is all in. The next batch is not lost
    meanwhile: it is awaited, not cancelled.
    """
    iterator = aiter(stream)
    pending: asyncio.Future | None = None
    announced = False
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            if not announced:
                done, _ = await asyncio.wait({pending}, timeout=quiet)
                if not done:
                    announced = True
                    yield None
                    continue
            try:
                batch = await pending
            except StopAsyncIteration:
                return
            pending = None
            yield batch
    finally:
        if pending is not None:
            pending.cancel()


def _event_stream(run: RunLink) -> AsyncIterator[list[Event]]:
    """The run's events; a long history is thinned (see HISTORY_STEPS)."""
    return run.events(from_start=True, history_steps=HISTORY_STEPS)


def run_app(attach: str | None = None) -> int:
    """Run the TUI in this terminal; returns the exit code.

    Args:
        attach: None opens the preset list; a run id (or unique prefix)
            watches that run; "" watches the newest live run.
    """
    result = ConvdeckApp(attach=attach).run()
    return result if isinstance(result, int) else 0


__all__ = ["ConvdeckApp", "run_app", "DEFAULT_PRESET", "MIN_WIDTH", "MIN_HEIGHT"]
