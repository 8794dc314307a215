"""Watching a run: attach or start, tail its events into RunFacts, poll its worker, steer it.

:class:`RunWatching` is the part of :class:`tui.app.ConvdeckApp` that follows
one run: the event tail folds events into :class:`engine.run.facts.RunFacts`
and the chart's :class:`engine.run.history.RunHistory`, a timer checks that the
worker lives, and the run-side keys (pause, stop, remedy, detach) send control
commands. It reads widgets by type and never imports TensorFlow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App
from textual.widgets import OptionList

from engine.run.facts import PHASE_WORDS, RunFacts
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
from tui.engine_link import RunLink
from tui.handlers import until_shutdown
from tui.live_runs import header_notice, launch_notice
from tui.messages import (
    CommandDone,
    LiveRunsFound,
    RunEvents,
    RunSummaryPolled,
    RunTailEnded,
)
from tui.widgets.config_pane import ConfigPane
from tui.widgets.gpu_panel import GpuPanel
from tui.widgets.header import RunHeader
from tui.widgets.log_pane import LogPane
from tui.widgets.loss_chart import LossChart
from tui.widgets.preset_list import PresetList
from tui.widgets.remedy_bar import RemedyBar, remedy_title

if TYPE_CHECKING:
    from engine.config import RunConfig
    from tui.engine_link import Engine

INGEST_CHUNK = 2000
"""Events folded in per turn of the event loop, so keys stay quick while a long run replays."""
UI_UPDATE_INTERVAL = 0.25
"""The least seconds between updates of the widgets from a run's events (see _queue_run_events)."""
CAUGHT_UP_AFTER = 0.15
"""Seconds without a new batch after which the tail has read the history (see _until_quiet)."""
URGENT_EVENTS = (Oom, Failed, Nan, Finished, RemedyApplied, RunStarted, WorkerExit)
"""Events shown at once, however soon after the last update."""

HISTORY_STEPS = 20_000
"""Step events replayed when attaching to a long run: ~40 per bucket of a 512-bucket chart,
each weighted by the steps it stands for (a million-step run reaches its live tail in ~1 s)."""


class RunWatching(App[int]):
    """The app's side that watches one run (mixed into :class:`tui.app.ConvdeckApp`).

    It expects the app to set ``engine`` and ``liveness_interval``; the app's
    ``__init__`` calls :meth:`_init_watching`.
    """

    engine: Engine
    liveness_interval: float

    def _init_watching(self, attaching: bool) -> None:
        """The state of watching: none yet (``attaching`` when a run is looked up at launch)."""
        self.run_link: RunLink | None = None
        self.state: RunFacts | None = None
        """The watched run's facts, as shown (see watch_run: a snapshot until the history is in)."""
        self.history: RunHistory | None = None
        """The watched run's chart data."""
        self._folding: RunFacts | None = None
        """The facts the event tail folds; shown once the history is in."""
        self._attaching = attaching
        self._liveness_in_flight = False
        self._bindings_key: tuple = ()
        self._pending_events: list = [None, [], 0]
        """[run id, notable events, step count] folded in but not yet shown."""
        self._flush_timer: Any = None
        self._last_ui_update = 0.0
        self._worker_gone_polls = 0
        self._unreadable_noted = False
        self.live_runs: list[RunFacts] = []
        """The runs that train on this machine, other than the one on screen (see _look_for_live_runs)."""
        self._preset_chosen = False
        """A preset was chosen since the watched run ended: the config pane edits it, not the run's."""
        self._remedy_asked: tuple[str, int] | None = None
        """The remedy last asked for, and the run's count of worker starts then."""

    def _refresh_footer(self) -> None:
        # Messages can arrive while the app shuts down, when there is no screen left.
        if self.screen_stack and self.is_running:
            self.refresh_bindings()

    def _live(self) -> bool:
        return self.state is not None and self.state.live

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
        self._preset_chosen = False
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
    @until_shutdown
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
            text = launch_notice(self.live_runs)
        elif state.phase in ("starting", "restarting"):
            text = f"{_name(state)}: the worker is starting (TensorFlow loads first)…"
        elif state.phase == "building":
            text = f"{_name(state)}: {PHASE_WORDS['building']}…"
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
    @until_shutdown
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
    @until_shutdown
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
            header.show_idle(header_notice(self.live_runs))
        else:
            header.show_run(state)
        live = self._live()
        screen = self.screen_stack[0]
        screen.set_class(live, "-watching")
        screen.set_class(state is not None and state.status == "waiting", "-waiting")
        self._show_run_config()
        key = (state.status if state else None, state.phase if state else None, live, bool(self.live_runs))
        if key != self._bindings_key:
            self._bindings_key = key
            self._refresh_footer()

    def _show_run_config(self) -> None:
        """The config pane: the run's config as it trains (or trained) while a run is on screen.

        An ended run's stays until a preset is chosen again (:meth:`show_chosen_preset`).
        """
        state, pane = self.state, self.query_one(ConfigPane)
        if state is None:
            self.show_chosen_preset()
            pane.disabled = False
            return
        if state.config and (state.live or not self._preset_chosen):
            note = "live" if state.live else "as trained"  # beside the name, in a 30-column pane
            pane.show_live(_name(state), state.config, note)
        pane.disabled = pane.shows_run or state.live  # read-only, also before the worker's config is in

    def show_chosen_preset(self) -> None:
        """Make the config pane the editor of the preset under the list's cursor again."""
        pane = self.query_one(ConfigPane)
        if self._live() or not pane.shows_run:
            return
        self._preset_chosen = True
        highlighted = self.query_one(PresetList).highlighted
        if highlighted is not None:
            pane.show_preset(highlighted)
        pane.disabled = False

    # -------------------------------------------------------------- live runs

    @work(thread=True, group="live-runs", exit_on_error=False)
    def _look_for_live_runs(self, starting: RunConfig | None = None) -> None:
        """List the runs that train here; with ``starting``, to decide whether to ask first."""
        try:
            runs = [facts for facts in self.engine.list_runs() if facts.live]
        except Exception as error:  # noqa: BLE001 - the preset screen works without the list
            self.post_message(LiveRunsFound([], starting))
            self.call_from_thread(self.query_one(LogPane).note, f"cannot list runs: {error}", "yellow")
            return
        self.post_message(LiveRunsFound(runs, starting))

    @on(LiveRunsFound)
    @until_shutdown
    def _live_runs_found(self, message: LiveRunsFound) -> None:
        shown = self.state.run_id if self.state is not None else None
        self.live_runs = [facts for facts in message.runs if facts.run_id != shown]
        if message.starting is not None:
            self._start_beside(message.starting, self.live_runs)
        if self.state is None and not self._attaching:
            self._show_state()
            self._update_placeholder()

    def action_attach_live(self) -> None:
        """Watch a run that trains here: the only one, or the one picked from a list."""
        from tui.live_runs import describe
        from tui.screens.pick_run import PickRunScreen

        live = self.live_runs
        if len(live) == 1:
            self._begin_attach(live[0].run_id)
        elif live:
            choices = [(facts.run_id, describe(facts)) for facts in reversed(live)]

            def picked(run_id: str | None) -> None:
                if run_id:
                    self._begin_attach(run_id)

            self.push_screen(PickRunScreen("Attach to which run?", choices), picked)

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
    @until_shutdown
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

    def action_pause(self) -> None:
        """Pause the running run."""
        self.send("pause")

    def action_resume(self) -> None:
        """Resume the paused run."""
        self.send("resume")

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

    def action_offered_remedy(self, name: str) -> None:
        """A remedy key while an OOM waits (the footer's entry): as :meth:`action_remedy`."""
        self.action_remedy(name)

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
        self._look_for_live_runs()  # the run just left is still one
        self.query_one("#preset-options", OptionList).focus()



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
