"""``convdeck run`` and ``convdeck resume``: start or continue a run and follow it to its end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import click

from engine.config import ConfigError
from engine.presets import DEFAULT_PRESET, load_preset
from engine.remedies import REMEDIES
from engine.run import client
from engine.run.facts import finished_status
from engine.run.protocol import TERMINAL_EVENTS, Failed, Finished, RunStarted
from tui.cli.common import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    set_option,
)
from tui.progress import Display, JsonLinesDisplay, fmt, fmt_duration, make_display
from tui.terminal import one_line as _one_line
from tui.terminal import user_error

# How long Ctrl-C keeps asking a starting worker (no socket yet) to stop
# before falling back to SIGTERM, which the worker treats the same way.
STOP_RETRY_SECONDS = 10.0


@click.command()
@click.argument("preset", required=False, default=DEFAULT_PRESET)
@set_option("--set train.batch_size=64 (a TOML value)")
@click.option("--detach", is_flag=True, help="Print the run id and return; the run goes on.")
@click.option("--json", "json_lines", is_flag=True, help="Print the events as JSON lines.")
@click.option(
    "--workers",
    metavar="HOST:PORT,...",
    help="Train on several machines: every worker's address, the same list on each "
    "(writes TF_CONFIG; train.strategy becomes multi_worker).",
)
@click.option(
    "--worker-index",
    type=int,
    metavar="N",
    help="This machine's place in --workers; 0 is the chief, which records the run.",
)
@click.option(
    "--notify",
    "notify_urls",
    multiple=True,
    metavar="URL",
    help="Also alert this Apprise URL (ntfy://TOPIC, json://HOST/PATH, ...) when the run ends or stalls.",
)
def run(
    preset: str,
    overrides: tuple[str, ...],
    detach: bool,
    json_lines: bool,
    workers: str | None,
    worker_index: int | None,
    notify_urls: tuple[str, ...],
) -> int:
    """Train PRESET (default lenet5-digits) without the UI."""
    if notify_urls:
        # A JSON array of strings is a TOML array too: checked with the rest of the config.
        overrides = (*overrides, f"notify.urls={json.dumps(list(notify_urls))}")
    config = load_preset(preset, overrides)
    if workers is not None or worker_index is not None or config.train.strategy == "multi_worker":
        _join_cluster(config, workers, worker_index)
    handle = client.start_run_sync(config)
    return _detach_or_follow(handle, detach, json_lines)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--remedy", metavar="NAME", help=f"Apply first: {', '.join(REMEDIES)}.")
@click.option("--detach", is_flag=True, help="Print the run id and return; the run goes on.")
@click.option("--json", "json_lines", is_flag=True, help="Print the events as JSON lines.")
@click.option(
    "--force",
    is_flag=True,
    help="End a hung worker first (it holds the run but stopped touching its heartbeat).",
)
@click.option(
    "--from-scratch",
    is_flag=True,
    help="Start again from step 0 with the same config (when no checkpoint can be used); "
    "the old checkpoints are moved aside, not deleted.",
)
def resume(
    run_ref: str, remedy: str | None, detach: bool, json_lines: bool, force: bool, from_scratch: bool
) -> int:
    """Continue a stopped, failed or crashed RUN from its newest intact checkpoint."""
    handle = client.resume_run_sync(run_ref, remedy=remedy, force=force, from_scratch=from_scratch)
    return _detach_or_follow(handle, detach, json_lines)


def _join_cluster(config: Any, workers: str | None, worker_index: int | None) -> None:
    """Check the cluster before any worker starts; --workers writes TF_CONFIG for it."""
    from engine.cluster import read_tf_config, worker_timeout, workers_tf_config

    if workers is not None or worker_index is not None:
        if workers is None:
            raise ConfigError(
                "--worker-index needs --workers HOST:PORT,... (every worker's address)"
            )
        if worker_index is None:
            raise ConfigError(
                "--workers needs --worker-index N, this machine's place in the list "
                "(0 is the chief)"
            )
        tf_config = workers_tf_config(workers, worker_index)
        if config.train.strategy not in ("auto", "multi_worker"):
            raise ConfigError(
                f"--workers trains with train.strategy 'multi_worker'; "
                f"got {config.train.strategy!r}"
            )
        config.train.strategy = "multi_worker"
        os.environ["TF_CONFIG"] = tf_config  # the worker started next inherits it
    read_tf_config()  # a missing or malformed TF_CONFIG: one line now, not after TensorFlow loads
    worker_timeout()


def _detach_or_follow(handle: client.RunHandle, detach: bool, json_lines: bool) -> int:
    if detach:
        _print_detached(handle, json_lines)
        return EXIT_DONE
    return follow(handle, make_display(json_lines))


def _print_detached(handle: client.RunHandle, json_lines: bool) -> None:
    if json_lines:
        click.echo(
            json.dumps(
                {"run_id": handle.run_id, "run_dir": str(handle.run_dir), "pid": handle.pid()}
            )
        )
        return
    # The id alone on stdout, so `RUN=$(convdeck run --detach)` works; the advice is for people.
    click.echo(handle.run_id)
    click.echo(
        f"started; watch it: convdeck attach {handle.run_id} · stop it: "
        f"convdeck ctl {handle.run_id} stop · log: {handle.log_path}",
        err=True,
    )


def follow(handle: client.RunHandle, display: Display) -> int:
    """Show a run's new events until it ends; returns the exit code.

    Ctrl-C asks the worker to stop (checkpoint, then end) and keeps
    following; a second Ctrl-C leaves it running and returns 130.
    """
    try:
        outcome = asyncio.run(_follow(handle, display))
    finally:
        display.close()
    return _report(handle, outcome, display)


class _Outcome:
    """How following ended: the run's last terminal event, or a detach."""

    def __init__(self) -> None:
        self.terminal: Finished | Failed | None = None
        self.interrupted = False
        self.detached = False


async def _follow(handle: client.RunHandle, display: Display) -> _Outcome:
    outcome = _Outcome()
    interrupts = _Interrupts(handle, display, outcome)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupts.on_sigint)
    try:
        reading = asyncio.create_task(_consume(handle, display, outcome))
        detaching = asyncio.create_task(interrupts.detach.wait())
        await asyncio.wait({reading, detaching}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reading, detaching, *interrupts.tasks):
            task.cancel()
        if reading.done() and not reading.cancelled():
            reading.result()  # a bug in reading should show, not vanish
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return outcome


async def _consume(handle: client.RunHandle, display: Display, outcome: _Outcome) -> None:
    async for batch in handle.events(offset=handle.spawn_offset, until_done=True):
        display.handle(batch)
        for event in batch:
            if isinstance(event, TERMINAL_EVENTS):
                outcome.terminal = event
            elif isinstance(event, RunStarted):
                outcome.terminal = None


class _Interrupts:
    """Ctrl-C while following: the first stops the run, the second detaches."""

    def __init__(self, handle: client.RunHandle, display: Display, outcome: _Outcome) -> None:
        self.handle = handle
        self.display = display
        self.outcome = outcome
        self.detach = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def on_sigint(self) -> None:
        if self.outcome.interrupted:
            self.outcome.detached = True
            self.detach.set()
            return
        self.outcome.interrupted = True
        self.display.note(
            "stopping: the run saves a checkpoint, then ends (Ctrl-C again to leave it running)"
        )
        self.tasks.append(asyncio.create_task(self._request_stop()))

    async def _request_stop(self) -> None:
        deadline = time.monotonic() + STOP_RETRY_SECONDS
        while self.handle.is_alive():
            reply = await self.handle.command("stop")
            if reply.get("ok"):
                return
            if not reply.get("unreachable"):
                self.display.note(f"the worker refused to stop: {reply.get('error')}")
                return
            if time.monotonic() >= deadline:
                # Still starting (no socket yet): SIGTERM stops it the same way.
                self.handle.terminate()
                return
            await asyncio.sleep(0.5)


def _report(handle: client.RunHandle, outcome: _Outcome, display: Display) -> int:
    """Print how the run ended and choose the exit code."""
    quiet = _is_json(display)
    if outcome.detached:
        user_error(
            f"left run {handle.run_id} running; watch it again with "
            f"`convdeck attach {handle.run_id}`"
        )
        return EXIT_INTERRUPTED
    event = outcome.terminal
    if event is None:
        return _report_crash(handle)
    # No wait for the worker's exit: its last event comes after its last file (checkpoint,
    # model.keras, eval.json), so the run is done; tearing TensorFlow down takes it a second
    # or two more, alone. Its status is already the terminal event's, and `convdeck resume`
    # waits for an exiting worker to let go of the run's lock.
    if isinstance(event, Failed):
        return _report_failure(handle, event)
    if not quiet:
        click.echo(finished_line(handle.run_id, event))
    reason = event.reason or "completed"
    if reason != "stopped" and finished_status(reason) == "stopped":
        # e.g. "nan" with train.on_nan = "stop": it ended, but did not train. An early stop
        # finished as asked, and a sweep's pruned trial ended as its sweep asked.
        user_error(f"run {handle.run_id} ended early: {reason}")
        return EXIT_FAILED
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_DONE


def _is_json(display: Display) -> bool:
    return isinstance(display, JsonLinesDisplay)


def finished_line(run_id: str, event: Finished) -> str:
    """The closing line of a run: how it ended and its figures."""
    reason = event.reason
    values = {
        "val_accuracy": event.val_accuracy,
        "best_val_accuracy": event.best_val_accuracy,
        "val_loss": event.val_loss,
        "accuracy": event.accuracy,
        "loss": event.loss,
    }
    figures = "  ".join(f"{name} {fmt(value)}" for name, value in values.items() if value is not None)
    steps = event.steps if event.steps is not None else "?"
    took = f"  {steps} steps in {fmt_duration(event.elapsed)}"
    line = f"run {run_id} {reason}: {figures}{took}"
    if reason == "stopped":
        line += f"  (continue it with `convdeck resume {run_id}`)"
    return line


def _report_failure(handle: client.RunHandle, event: Failed) -> int:
    error = _one_line(event.error or "unknown error")
    if event.user_error:
        user_error(error)
        return EXIT_USAGE
    where = f" (traceback: {event.traceback_path})" if event.traceback_path else ""
    user_error(f"run {handle.run_id} failed: {error}{where}")
    return EXIT_FAILED


def _report_crash(handle: client.RunHandle) -> int:
    code = handle.exit_code()
    how = (
        ""
        if code is None
        else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
    )
    facts = handle.summary()
    # The supervisor's diagnosis (engine.run.supervisor): the signal and what to do next.
    why = ""
    died = facts.died if facts.status == "crashed" else None
    if died is not None and (died.message or died.suggestion):
        # "killed by SIGKILL: <suggestion>": the signal is named above already.
        reason = died.message or died.suggestion
        if died.signal and reason.startswith(f"killed by {died.signal}: "):
            reason = f"{died.signal}: " + reason.split(": ", 1)[1]
        why = f"; {reason}"
    last = handle.last_log_line()
    said = f"; its log ends: {last}" if last else ""
    user_error(
        f"run {handle.run_id} crashed: the worker died without a final event{how}{why}{said} "
        f"(see {handle.log_path})"
    )
    return EXIT_FAILED


