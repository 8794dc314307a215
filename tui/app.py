"""The convdeck app: pick a preset, start it, watch it train, fix an OOM with one key.

The app holds no training logic. It talks to runs only through an engine
object (:mod:`tui.engine_link`): an async event tail and control commands.
It never imports TensorFlow, so the first frame comes in well under a second.
Build it with :class:`ConvdeckApp` (tests hand it a fake engine and recorded
GPU samples) or run it with :func:`run_app`.

This module holds the layout, the presets side and the glue; watching a run
is :mod:`tui.run_watch` and the keys are :mod:`tui.bindings`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static

from engine.gpu import GpuSource
from engine.remedies import REMEDIES
from tui.bindings import APP_BINDINGS, MAIN_SCREEN_ACTIONS, PALETTE
from tui.chart_keys import ChartKeys
from tui.engine_link import Engine
from tui.handlers import until_shutdown
from tui.live_runs import header_notice
from tui.messages import (
    ConfigEdited,
    PresetChosen,
    PresetHighlighted,
    PresetsLoaded,
    StartRequested,
)
from tui.queue_link import QueueLink

# Re-exported: tests and benchmarks read the tail's knobs and helpers here.
from tui.run_watch import HISTORY_STEPS as HISTORY_STEPS
from tui.run_watch import INGEST_CHUNK as INGEST_CHUNK
from tui.run_watch import RunWatching
from tui.run_watch import _liveness as _liveness
from tui.run_watch import _until_quiet as _until_quiet
from tui.widgets.config_pane import ConfigPane
from tui.widgets.gpu_panel import GpuPanel
from tui.widgets.header import RunHeader
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_chart import LossChart
from tui.widgets.preset_list import DEFAULT_PRESET, PresetList
from tui.widgets.queue_badge import QueueBadge
from tui.widgets.remedy_bar import RemedyBar, remedy_title

if TYPE_CHECKING:  # pydantic costs ~0.1 s: the first frame does not wait for it
    from engine.config import RunConfig
    from engine.run.facts import RunFacts

MIN_WIDTH, MIN_HEIGHT = 80, 24


class ConvdeckApp(RunWatching, ChartKeys, App[int]):
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
    BINDINGS = APP_BINDINGS

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
        self.queue_link = QueueLink()
        """The run queue (tests swap in one with a fake runner start)."""
        self._init_watching(attaching=attach is not None)
        self.config_error: str | None = "no preset chosen yet"
        self.presets_loaded = False

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
        else:  # name the runs that train here (a detached one, one left running at quit)
            self.call_after_refresh(self._look_for_live_runs)

    def on_unmount(self) -> None:
        self.engine.close()  # the warm worker goes with the app; live runs go on

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
    @until_shutdown
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
            self.query_one(RunHeader).show_idle(header_notice(self.live_runs))
            self.query_one("#preset-options", OptionList).focus()
            self.engine.warm_up()  # TensorFlow loads while the person chooses
            if presets.highlighted is not None:
                self.query_one(ConfigPane).show_preset(presets.highlighted)

    @on(PresetHighlighted)
    @until_shutdown
    def _preset_highlighted(self, message: PresetHighlighted) -> None:
        pane = self.query_one(ConfigPane)
        if self._live():
            return
        if pane.shows_run:
            self.show_chosen_preset()  # an ended run's config gives way to the preset chosen
        else:
            pane.show_preset(message.preset)

    def on_descendant_focus(self, event: Any) -> None:
        # The preset list in hand again after a run ended: the pane edits its preset.
        # (An attached app has no preset list; nor has the DOM while the app shuts down.)
        preset_lists = self.query(PresetList)
        if preset_lists and preset_lists.first() in event.widget.ancestors_with_self:
            self.show_chosen_preset()

    @on(PresetChosen)
    @on(StartRequested)
    def _start_requested(self, message: PresetChosen | StartRequested) -> None:
        self.action_start()

    @on(ConfigEdited)
    @until_shutdown
    def _config_edited(self, message: ConfigEdited) -> None:
        # The footer rebuilds on every refresh: only when the answer changes.
        valid_before = self.config_error is None
        self.config_error = message.error
        if valid_before != (message.error is None):
            self._refresh_footer()

    # ------------------------------------------------------------ run control

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
        if action in ("pause", "resume"):
            # Space names what it does now; nothing to pause while an OOM waits for a remedy.
            return live and self.state.status == ("running" if action == "pause" else "paused")
        if action == "remedy":
            # A remedy restarts the worker: not while it is already restarting.
            return live and self.state.phase != "restarting"
        if action == "offered_remedy":  # the footer's remedy keys: while an OOM waits
            return live and self.state.status == "waiting"
        # While a run to attach to is looked up, the preset screen's keys do not apply yet.
        preset_keys = not live and not self._attaching
        if action in ("start", "queue_preset", "lr_find"):
            return preset_keys
        if action == "attach_live":
            return preset_keys and bool(self.live_runs)
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
        self.show_chosen_preset()  # after a run ended, Enter starts the preset under the cursor
        pane = self.query_one(ConfigPane)
        config = pane.validate() if pane.preset is not None else None
        if config is None:
            reason = pane.error or "no preset chosen yet"
            self.notify(f"Not started: {reason}", severity="error", timeout=6)
            self.query_one(LogPane).note(f"not started: {reason}", "red")
            return
        self._look_for_live_runs(config)  # then _start_beside: it asks first beside a live run

    def _start_beside(self, config: RunConfig, live: list[RunFacts]) -> None:
        """Start ``config``; when runs train on the device it would use, only once the user says so."""
        from tui.live_runs import shares_devices
        from tui.screens.confirm_start import ConfirmStartScreen

        if self._live():
            return  # a run was started or attached meanwhile
        sharing = [facts for facts in live if shares_devices(config, facts)]
        if not sharing:
            self._start(config)
            return

        def answered(start: bool | None) -> None:
            if start:
                self._start(config)
            else:
                self.query_one(LogPane).note(f"{config.name} not started: a run trains on its device", "yellow")

        self.push_screen(ConfirmStartScreen(config.name, sharing), answered)

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

    def action_lr_find(self) -> None:
        """The learning-rate range test of the config pane's settings; its rate comes back to the pane."""
        from tui.screens.lr_find import LrFindScreen

        pane = self.query_one(ConfigPane)
        config = pane.validate() if pane.preset is not None else None
        if config is None:
            self.notify(f"No range test: {pane.error or 'no preset chosen yet'}", severity="error")
            return

        def use(rate: float | None) -> None:
            if rate is not None:
                pane.set_field("train.learning_rate", f"{rate:g}")
                self.notify(f"train.learning_rate = {rate:g} (from the range test)")

        self.push_screen(LrFindScreen(config, find=self.engine.find_learning_rate), use)

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
        entries = [(title, text, action, getattr(self, f"action_{action}")) for title, text, action in PALETTE]
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


def run_app(attach: str | None = None) -> int:
    """Run the TUI in this terminal; returns the exit code.

    Args:
        attach: None opens the preset list; a run id (or unique prefix)
            watches that run; "" watches the newest live run.
    """
    result = ConvdeckApp(attach=attach).run()
    return result if isinstance(result, int) else 0


__all__ = ["ConvdeckApp", "run_app", "DEFAULT_PRESET", "MIN_WIDTH", "MIN_HEIGHT"]
