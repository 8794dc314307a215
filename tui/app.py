"""The convdeck app: pick a preset, start it, watch it train, fix an OOM with one key.

The app holds no training logic. It talks to runs only through an engine
object (:mod:`tui.engine_link`): an async event tail and control commands.
It never imports TensorFlow, so the first frame comes in well under a second.
Build it with :class:`ConvdeckApp` (tests hand it a fake engine and recorded
GPU samples) or run it with :func:`run_app`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static

from engine.config import RunConfig
from engine.events import TERMINAL_EVENTS
from engine.gpu import GpuSource
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
from tui.run_state import RunState
from tui.widgets.config_pane import ConfigPane
from tui.widgets.gpu_panel import GpuPanel
from tui.widgets.header import RunHeader
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_chart import SMOOTHINGS, VIEWS, LossChart
from tui.widgets.preset_list import DEFAULT_PRESET, PresetList
from tui.widgets.remedy_bar import RemedyBar

MIN_WIDTH, MIN_HEIGHT = 80, 24
INGEST_CHUNK = 2000
"""Events folded in per turn of the event loop, so keys stay quick while a long run replays."""

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
        "smoothing",
        "log_scale",
        "x_axis",
        "view",
    }
)

HISTORY_STEPS = 50_000
"""Step events replayed when attaching to a long run: plenty for a chart of 512 buckets."""

REMEDY_NAMES = {
    "halve-batch": "halve the batch",
    "halve-accumulate": "halve the batch, accumulate gradients",
    "mixed-precision": "mixed precision",
    "resnet18": "switch to ResNet [2,2,2,2]",
}


class ConvdeckApp(App[int]):
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
    # | h a m r | remedies          | a live run (the OOM bar offers them)  |
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
        Binding(
            "h",
            "remedy('halve-batch')",
            "Halve batch",
            tooltip="Halve the batch size (fixes most OOMs)",
            id="remedy.halve-batch",
        ),
        Binding(
            "a",
            "remedy('halve-accumulate')",
            "Halve+accum",
            tooltip="Halve the batch and accumulate two steps: same effective batch",
            id="remedy.halve-accumulate",
        ),
        Binding(
            "m",
            "remedy('mixed-precision')",
            "Mixed prec.",
            tooltip="Switch to mixed precision (about half the activation memory)",
            id="remedy.mixed-precision",
        ),
        Binding(
            "r",
            "remedy('resnet18')",
            "ResNet-18",
            tooltip="Switch the model to ResNet [2,2,2,2]",
            id="remedy.resnet18",
        ),
        Binding("d", "detach", "Detach", tooltip="Stop watching; the run keeps going", id="detach"),
        Binding("slash", "filter", "Filter", tooltip="Filter the presets", id="filter"),
        Binding(
            "ctrl+s",
            "save_preset",
            "Save preset",
            tooltip="Save the config pane as a user preset",
            id="save-preset",
        ),
        Binding("o", "runs", "Runs", tooltip="List runs, open one, overlay two", id="runs"),
        Binding(
            "s",
            "smoothing",
            "Smoothing",
            show=False,
            tooltip="Cycle the loss smoothing",
            id="chart.smoothing",
        ),
        Binding(
            "l",
            "log_scale",
            "Log scale",
            show=False,
            tooltip="Linear or log y axis",
            id="chart.log-scale",
        ),
        Binding(
            "t",
            "x_axis",
            "X axis",
            show=False,
            tooltip="X axis: step, epoch, wall time",
            id="chart.x-axis",
        ),
        Binding(
            "v",
            "view",
            "View",
            show=False,
            tooltip="Chart: loss, accuracy, learning rate, images/s",
            id="chart.view",
        ),
        Binding("question_mark,f1", "help", "Help", tooltip="Keys and how it works", id="help"),
        Binding("q", "quit_app", "Quit", tooltip="Quit (asks about a live run)", id="quit"),
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
        self.state: RunState | None = None
        self.config_error: str | None = "no preset chosen yet"
        self.presets_loaded = False
        self._liveness_in_flight = False
        self._bindings_key: tuple = ()

    # ----------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
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
        self._check_size(self.size.width, self.size.height)
        self._load_presets()
        if self.attach_ref is not None:
            self._attach(self.attach_ref or None)

    def on_resize(self, event: Any) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, width: int, height: int) -> None:
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        screen = self.screen_stack[0] if self.screen_stack else self.screen
        screen.set_class(small, "-too-small")
        screen.set_class(width < 110, "-narrow")
        screen.set_class(width >= 140, "-wide")
        screen.set_class(height >= 40, "-tall")
        if small:
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
        if self.state is None:
            self.query_one(RunHeader).show_idle()
            self.query_one("#preset-options", OptionList).focus()
        if presets.highlighted is not None:
            self.query_one(ConfigPane).show_preset(presets.highlighted)

    @on(PresetHighlighted)
    def _preset_highlighted(self, message: PresetHighlighted) -> None:
        if not self._live():
            self.query_one(ConfigPane).show_preset(message.preset)

    @on(PresetChosen)
    @on(StartRequested)
    def _start_requested(self, message: PresetChosen | StartRequested) -> None:
        self.action_start()

    @on(ConfigEdited)
    def _config_edited(self, message: ConfigEdited) -> None:
        # The footer rebuilds on every refresh: only when the answer changes.
        valid_before = self.config_error is None
        self.config_error = message.error
        if valid_before != (message.error is None):
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
        if action in ("pause_resume", "stop", "remedy"):
            return live
        if action in ("start", "filter"):
            return not live
        if action == "save_preset":
            return not live and self.config_error is None
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

    @work(thread=True, exclusive=True, group="attach", exit_on_error=False)
    def _attach(self, ref: str | None) -> None:
        try:
            run = self.engine.find_run(ref)
        except Exception as error:  # noqa: BLE001 - say it and stay on the preset list
            self.call_from_thread(self.notify, str(error), severity="error", timeout=8)
            self.call_from_thread(self.query_one(LogPane).note, f"attach: {error}", "red")
            return
        self.call_from_thread(self.watch_run, run)

    def watch_run(self, run: RunLink, preset: str = "") -> None:
        """Show ``run``: its history first, then follow it live."""
        self.run_link = run
        self.state = RunState(run_id=run.run_id, preset=preset)
        self.query_one(LossChart).set_history(self.state.history)
        log = self.query_one(LogPane)
        log.clear()
        log.start_time = None
        self.query_one(RemedyBar).close()
        self.query_one(GpuPanel).pids = ()
        self._show_state()
        self._tail(run)
        self.query_one(LossChart).focus()
        self.set_timer(self.liveness_interval, self._check_liveness)

    @work(exclusive=True, group="tail", exit_on_error=False)
    async def _tail(self, run: RunLink) -> None:
        """Fold the run's events into its state, a chunk per turn of the event loop."""
        state = self.state
        ended = False
        try:
            async for batch in _event_stream(run):
                if not isinstance(batch, list):
                    batch = [batch]
                for start in range(0, len(batch), INGEST_CHUNK):
                    chunk = batch[start : start + INGEST_CHUNK]
                    if state is not self.state:
                        return
                    notable, steps = state.apply(chunk)
                    self.post_message(RunEvents(run.run_id, notable, steps))
                    ended = ended or any(_is_terminal(e) for e in notable)
                    await asyncio.sleep(0)
                if ended:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a broken tail is shown, never fatal
            self.post_message(RunTailEnded(run.run_id, error=f"reading events failed: {error}"))
            return
        self.post_message(RunTailEnded(run.run_id))

    @on(RunEvents)
    def _run_events(self, message: RunEvents) -> None:
        if self.state is None or message.run_id != self.state.run_id:
            return
        if message.steps:
            self.query_one(LossChart).mark_dirty()
        if message.notable:
            self._notable_events(message.notable)
        self._show_state()

    def _notable_events(self, events: list[dict]) -> None:
        state = self.state
        self.query_one(LogPane).add_events(events)
        self.query_one(LossChart).mark_dirty()
        kinds = {e.get("type") for e in events}
        if state.pid:
            self.query_one(GpuPanel).pids = (state.pid,)
        if kinds & {"run_started", "remedy_applied"} and state.config:
            self.query_one(ConfigPane).show_live(state.preset or state.run_id, state.config)
        if state.pending_oom is not None:
            self.query_one(RemedyBar).offer(state.pending_oom, state.remedies())
            self.bell()
        else:
            self.query_one(RemedyBar).close()
        if "failed" in kinds:
            self.notify(f"Run failed: {state.reason}", severity="error", timeout=15)
        if "nan" in kinds:
            self.notify(state.reason or "loss is NaN", severity="warning", timeout=10)

    @on(RunTailEnded)
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
            summary = run.summary()
            status, reason = summary.status, getattr(summary, "reason", None)
        except Exception as error:  # noqa: BLE001 - unknown, not dead
            status, reason = None, str(error)
        self.post_message(RunSummaryPolled(run.run_id, status, reason))

    @on(RunSummaryPolled)
    def _summary_polled(self, message: RunSummaryPolled) -> None:
        self._liveness_in_flight = False
        state = self.state
        if state is None or message.run_id != state.run_id:
            return
        if message.status == "crashed" and state.live:
            state.status = "crashed"
            state.pending_oom = None
            state.reason = message.reason or "the worker died without a last event (see worker.log)"
            self.query_one(RemedyBar).close()
            self.query_one(LogPane).note(f"CRASHED: {state.reason}", "bold red")
            self.notify(f"Run {state.run_id} crashed: {state.reason}", severity="error", timeout=15)
            self._show_state()
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
        key = (state.status if state else None, live)
        if key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

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
        self.post_message(CommandDone(command, reply if isinstance(reply, dict) else {"ok": False}))

    @on(CommandDone)
    def _command_done(self, message: CommandDone) -> None:
        if not message.reply.get("ok"):
            error = message.reply.get("error") or "no reply"
            self.notify(f"{message.command}: {error}", severity="error")
            self.query_one(LogPane).note(f"{message.command} refused: {error}", "red")

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
        """Apply one remedy: halve-batch, halve-accumulate, mixed-precision, resnet18."""
        self.send("remedy", name=name)
        self.query_one(LogPane).note(f"asked for remedy {name} ({REMEDY_NAMES.get(name, '')})")

    def action_detach(self) -> None:
        """Stop watching; a live run keeps training."""
        state = self.state
        if state is None:
            return
        self.workers.cancel_group(self, "tail")
        if state.live:
            self.notify(
                f"Detached from {state.run_id}; it keeps training. "
                f"`convdeck attach {state.run_id}` brings it back.",
                timeout=8,
            )
        self.run_link, self.state = None, None
        self.query_one(RemedyBar).close()
        self.query_one(LossChart).set_history(None)
        self.query_one(GpuPanel).pids = ()
        self._show_state()
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

    def action_smoothing(self) -> None:
        """Cycle the smoothing of the loss curve."""
        self.query_one(LossChart).cycle_smoothing()

    def action_log_scale(self) -> None:
        """Linear or logarithmic y axis."""
        self.query_one(LossChart).toggle_log_scale()

    def action_x_axis(self) -> None:
        """X axis: step, epoch, wall time."""
        self.query_one(LossChart).cycle_x_axis()

    def action_view(self) -> None:
        """Chart: loss, accuracy, learning rate, images/s."""
        self.query_one(LossChart).cycle_view()

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
                self._attach(run_id)

        self.push_screen(RunsScreen(self.engine), opened)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Command palette entries: the app's actions, then Textual's own."""
        entries = [
            ("Start run", "Start the chosen preset", "start", self.action_start),
            ("Pause / resume", "Pause or resume the run", "pause_resume", self.action_pause_resume),
            ("Stop run", "Checkpoint and stop the run", "stop", self.action_stop),
            ("Detach", "Stop watching; the run keeps going", "detach", self.action_detach),
            ("Runs", "List runs, open one, overlay two", "runs", self.action_runs),
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
        for name, remedy in REMEDY_NAMES.items():
            entries.append(
                (
                    f"Remedy: {remedy}",
                    f"Send remedy {name} to the run",
                    "remedy",
                    lambda name=name: self.action_remedy(name),
                )
            )
        for title, help_text, action, callback in entries:
            if self.check_action(action, ()):
                yield SystemCommand(title, help_text, callback)
        yield from super().get_system_commands(screen)


def _event_stream(run: RunLink) -> Any:
    """The run's events; a long history is thinned by the engine where it can."""
    try:
        return run.events(from_start=True, history_steps=HISTORY_STEPS)
    except TypeError:  # an engine (or fake) without thinning
        return run.events(from_start=True)


def _is_terminal(event: dict) -> bool:
    return event.get("type") in TERMINAL_EVENTS


def run_app(attach: str | None = None) -> int:
    """Run the TUI in this terminal; returns the exit code.

    Args:
        attach: None opens the preset list; a run id (or unique prefix)
            watches that run; "" watches the newest live run.
    """
    result = ConvdeckApp(attach=attach).run()
    return result if isinstance(result, int) else 0


__all__ = ["ConvdeckApp", "run_app", "DEFAULT_PRESET", "MIN_WIDTH", "MIN_HEIGHT"]
