"""The ``convdeck`` command line: the TUI by default, and headless commands for scripts.

Every command talks to runs through :mod:`engine.client`; training happens
in the detached worker, never here. A user's mistake (bad preset, field,
run id, command) ends in one line on stderr and exit code 2; a bug still
shows its traceback. Exit codes: 0 done, 1 the run failed, 2 bad usage or
input, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from engine import client
from engine.config import ConfigError, config_to_toml
from engine.presets import DEFAULT_PRESET, list_presets, load_preset
from tui.launch import one_line as _one_line
from tui.launch import user_error
from tui.progress import Display, JsonLinesDisplay, fmt, fmt_duration, make_display

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# After its last event the worker still saves and closes; wait a little so
# a `convdeck runs` right after sees it gone, but never hang on it.
EXIT_GRACE_SECONDS = 3.0
# How long Ctrl-C keeps asking a starting worker (no socket yet) to stop
# before falling back to SIGTERM, which the worker treats the same way.
STOP_RETRY_SECONDS = 10.0


def set_option(example: str):
    """The ``--set KEY=VALUE`` option of the commands that build a config."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Override a config field, e.g. {example}.",
    )


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def cli(ctx: click.Context) -> int:
    """Train convolutional networks from the terminal. Without a command: the TUI."""
    if ctx.invoked_subcommand is None:
        from tui.app import run_app

        return run_app()
    return EXIT_DONE


# -- run, resume -----------------------------------------------------------------


@cli.command()
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
def run(
    preset: str,
    overrides: tuple[str, ...],
    detach: bool,
    json_lines: bool,
    workers: str | None,
    worker_index: int | None,
) -> int:
    """Train PRESET (default lenet5-digits) without the UI."""
    config = load_preset(preset, overrides)
    if workers is not None or worker_index is not None or config.train.strategy == "multi_worker":
        _join_cluster(config, workers, worker_index)
    handle = client.start_run_sync(config)
    return _detach_or_follow(handle, detach, json_lines)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--remedy", metavar="NAME", help=f"Apply first: {', '.join(client.REMEDIES)}.")
@click.option("--detach", is_flag=True, help="Print the run id and return; the run goes on.")
@click.option("--json", "json_lines", is_flag=True, help="Print the events as JSON lines.")
def resume(run_ref: str, remedy: str | None, detach: bool, json_lines: bool) -> int:
    """Continue a stopped, failed or crashed RUN from its last checkpoint."""
    handle = client.resume_run_sync(run_ref, remedy=remedy)
    return _detach_or_follow(handle, detach, json_lines)


def _join_cluster(config: Any, workers: str | None, worker_index: int | None) -> None:
    """Check the cluster before any worker starts; --workers writes TF_CONFIG for it."""
    from engine.strategy import read_tf_config, worker_timeout, workers_tf_config

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
    # Scripts take the id as the last word of the last line.
    click.echo(
        f"watch it: convdeck attach {handle.run_id} · stop it: "
        f"convdeck ctl {handle.run_id} stop · log: {handle.log_path}"
    )
    click.echo(f"started run {handle.run_id}")


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
        self.terminal: dict | None = None
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
            if event["type"] in ("finished", "failed"):
                outcome.terminal = event
            elif event["type"] == "run_started":
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
        _error(
            f"left run {handle.run_id} running; watch it again with "
            f"`convdeck attach {handle.run_id}`"
        )
        return EXIT_INTERRUPTED
    event = outcome.terminal
    if event is None:
        return _report_crash(handle)
    handle.wait_exit(EXIT_GRACE_SECONDS)
    if event["type"] == "failed":
        return _report_failure(handle, event)
    if not quiet:
        click.echo(finished_line(handle.run_id, event))
    if event.get("reason", "completed") not in ("completed", "stopped"):
        # e.g. "nan" with train.on_nan = "stop": it ended, but did not train.
        _error(f"run {handle.run_id} ended early: {event.get('reason')}")
        return EXIT_FAILED
    return EXIT_INTERRUPTED if outcome.interrupted else EXIT_DONE


def _is_json(display: Display) -> bool:
    return isinstance(display, JsonLinesDisplay)


def finished_line(run_id: str, event: dict) -> str:
    """The closing line of a run: how it ended and its figures."""
    reason = event.get("reason", "completed")
    figures = "  ".join(
        f"{name} {fmt(event.get(name))}"
        for name in ("val_accuracy", "best_val_accuracy", "val_loss", "accuracy", "loss")
        if event.get(name) is not None
    )
    took = f"  {event.get('steps', '?')} steps in {fmt_duration(event.get('elapsed'))}"
    line = f"run {run_id} {reason}: {figures}{took}"
    if reason == "stopped":
        line += f"  (continue it with `convdeck resume {run_id}`)"
    return line


def _report_failure(handle: client.RunHandle, event: dict) -> int:
    error = _one_line(str(event.get("error") or "unknown error"))
    if event.get("user_error"):
        _error(error)
        return EXIT_USAGE
    where = f" (traceback: {event['traceback_path']})" if event.get("traceback_path") else ""
    _error(f"run {handle.run_id} failed: {error}{where}")
    return EXIT_FAILED


def _report_crash(handle: client.RunHandle) -> int:
    code = handle.exit_code()
    how = (
        ""
        if code is None
        else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
    )
    summary = handle.summary()
    # The supervisor's diagnosis (engine.supervisor): the signal and what to do next.
    why = ""
    if summary.status == "crashed" and summary.reason:
        # "killed by SIGKILL: <suggestion>": the signal is named above already.
        reason = summary.reason
        if summary.signal and reason.startswith(f"killed by {summary.signal}: "):
            reason = f"{summary.signal}: " + reason.split(": ", 1)[1]
        why = f"; {reason}"
    last = handle.last_log_line()
    said = f"; its log ends: {last}" if last else ""
    _error(
        f"run {handle.run_id} crashed: the worker died without a final event{how}{why}{said} "
        f"(see {handle.log_path})"
    )
    return EXIT_FAILED


# -- fit-batch -----------------------------------------------------------------------


@cli.command("fit-batch")
@click.argument("preset", required=False, default=DEFAULT_PRESET)
@set_option("--set data.image_size=[64,64]")
@click.option(
    "--max",
    "cap",
    type=int,
    default=None,
    metavar="N",
    help="The largest batch to try (default 4096, or the training set's size).",
)
@click.option(
    "--steps", type=int, default=None, metavar="K", help="Real train steps per trial (default 3)."
)
@click.option("--json", "as_json", is_flag=True, help="Print each trial and the result as JSON.")
def fit_batch(
    preset: str, overrides: tuple[str, ...], cap: int | None, steps: int | None, as_json: bool
) -> int:
    """Find the largest batch PRESET really trains with, and suggest one with headroom.

    Doubles the batch from the preset's until a trial runs out of memory,
    then binary-searches; each trial runs a few real steps in a fresh process.
    """
    from engine import fitbatch

    cap = fitbatch.DEFAULT_CAP if cap is None else cap
    steps = fitbatch.DEFAULT_STEPS if steps is None else steps
    if cap < 1:
        raise ConfigError(f"--max: got {cap}; expected a batch size of at least 1")
    if steps < 1:
        raise ConfigError(f"--steps: got {steps}; expected at least 1")
    config = load_preset(preset, overrides)
    client.preflight(config)
    start = min(config.train.batch_size, cap)
    if not as_json:
        click.echo(
            f"fit-batch {config.name}: from batch {start} up to {cap}, {steps} real "
            f"step{'s' if steps != 1 else ''} a trial, each in a fresh process"
        )

    def show(trial: Any) -> None:
        if as_json:
            click.echo(json.dumps({"trial": _trial_json(trial)}))
        else:
            click.echo(_trial_line(trial))

    result = fitbatch.search(
        lambda batch: fitbatch.trial_in_subprocess(config, batch, steps), start, cap, show
    )
    if as_json:
        click.echo(json.dumps({"result": result.as_dict()}, default=str))
    if result.error is not None:
        error = result.error
        if error.user_error:
            raise ConfigError(error.detail)
        _error(
            f"the trial at batch {error.batch_size} failed: {error.detail} "
            f"(run `convdeck run {config.name} --set train.batch_size={error.batch_size}` "
            "to see the traceback)"
        )
        return EXIT_FAILED
    if result.largest == 0:
        _error(
            f"not even batch 1 fits ({result.trials[-1].detail}); try "
            "--set train.mixed_precision=true, smaller images or a smaller model"
        )
        return EXIT_FAILED
    if not as_json:
        for line in _fit_summary(config.name, result):
            click.echo(line)
    return EXIT_DONE


def _trial_line(trial: Any) -> str:
    if trial.error:
        outcome = "error"
    else:
        outcome = "fits" if trial.fits else "out of memory"
    extra = []
    if trial.fits and trial.images_per_sec:
        extra.append(f"{fmt(trial.images_per_sec, 0)} img/s")
    if trial.peak_bytes:
        extra.append(f"peak {trial.peak_bytes / (1 << 30):.2f} GiB")
    if not trial.fits and trial.detail:
        extra.append(_one_line(trial.detail)[:100])
    extra.append(f"{trial.seconds:.1f} s")
    return f"  batch {trial.batch_size:>6}  {outcome:<13}  " + "  ".join(extra)


def _trial_json(trial: Any) -> dict:
    from dataclasses import asdict

    return asdict(trial)


def _fit_summary(name: str, result: Any) -> list[str]:
    if result.limited_by_memory:
        found = (
            f"largest batch that ran: {result.largest} "
            f"(batch {result.first_failure} ran out of memory)"
        )
        why = "90% of it, rounded, to leave headroom"
    else:
        found = f"largest batch that ran: {result.largest}, the cap (no memory limit below it)"
        why = "the cap; raise --max to look further"
    return [
        found,
        f"suggested: train.batch_size = {result.suggested} ({why})",
        f"  convdeck run {name} --set train.batch_size={result.suggested}",
    ]


# -- listing and showing -----------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def presets(as_json: bool) -> int:
    """List the presets: name, model, dataset, description."""
    infos = list_presets()
    if as_json:
        _print_json([_preset_json(info) for info in infos])
        return EXIT_DONE
    rows = [
        (
            info.name,
            info.model,
            info.dataset,
            f"BROKEN: {info.error}" if info.error else info.description,
        )
        for info in infos
    ]
    _print_table(("NAME", "MODEL", "DATASET", "DESCRIPTION"), rows)
    return EXIT_DONE


def _preset_json(info: Any) -> dict:
    return {
        "name": info.name,
        "model": info.model,
        "dataset": info.dataset,
        "description": info.description,
        "source": info.source,
        "path": str(info.path),
        "error": info.error,
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs(as_json: bool) -> int:
    """List the runs: id, preset, status, epoch/step, last loss, started."""
    summaries = client.list_runs()
    if as_json:
        _print_json([summary.as_json() for summary in summaries])
        return EXIT_DONE
    if not summaries:
        click.echo("no runs yet; start one with `convdeck run`")
        return EXIT_DONE
    rows = [
        (
            s.run_id,
            s.preset,
            s.status,
            f"{s.epoch}/{s.step}",
            fmt(s.last_loss),
            fmt(s.val_accuracy),
            _when(s.started),
        )
        for s in summaries
    ]
    _print_table(("ID", "PRESET", "STATUS", "EPOCH/STEP", "LOSS", "VAL_ACC", "STARTED"), rows)
    crashes = [s for s in summaries if s.status == "crashed" and s.reason]
    if crashes:
        click.echo("")
    for summary in crashes:
        click.echo(f"{summary.run_id} crashed: {_one_line(summary.reason)}")
    return EXIT_DONE


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(run_ref: str, as_json: bool) -> int:
    """One run's status, config, best and last metrics."""
    handle = client.find_run(run_ref)
    config = handle.config()
    summary, metrics = handle.summary(), handle.metrics()
    if as_json:
        _print_json(
            {
                "summary": summary.as_json(),
                "metrics": metrics,
                "config": config.model_dump(mode="json"),
            }
        )
        return EXIT_DONE
    for label, value in _show_rows(summary, metrics):
        click.echo(f"{label:<11} {value}")
    click.echo("config:")
    click.echo("".join(f"  {line}\n" for line in config_to_toml(config).splitlines()), nl=False)
    return EXIT_DONE


def _show_rows(summary: Any, metrics: dict) -> list[tuple[str, str]]:
    status = f"{summary.status}" + (f" ({_one_line(summary.reason)})" if summary.reason else "")
    rows = [
        ("run", summary.run_id),
        ("directory", str(summary.run_dir)),
        ("status", status),
        ("preset", summary.preset),
        ("started", _when(summary.started)),
        ("progress", f"epoch {summary.epoch}, step {summary.step}"),
    ]
    if summary.pid:
        rows.append(("worker", f"pid {summary.pid}"))
    rows += _metric_rows(metrics)
    return rows


def _metric_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = []
    if metrics["last_step"]:
        rows.append(("last step", _figures(metrics["last_step"])))
    if metrics["last_epoch"]:
        rows.append(("last epoch", _figures(metrics["last_epoch"])))
    if best := metrics["best"]:
        rows.append(("best", f"val_accuracy {fmt(best['val_accuracy'])} at epoch {best['epoch']}"))
    if final := metrics["final"]:
        rows.append(("final", _figures(final)))
    if checkpoint := metrics["checkpoint"]:
        rows.append(("checkpoint", f"step {checkpoint.get('step')} {checkpoint.get('path', '')}"))
    if metrics["resumes"] or metrics["remedies"]:
        remedies = ", ".join(map(str, metrics["remedies"])) or "none"
        rows.append(("history", f"resumed {metrics['resumes']}x; remedies: {remedies}"))
    if metrics["unreadable_lines"]:
        rows.append(
            (
                "warning",
                f"{metrics['unreadable_lines']} torn or garbage lines in events.jsonl were skipped",
            )
        )
    if metrics["error"]:
        where = f" (traceback: {metrics['traceback_path']})" if metrics["traceback_path"] else ""
        rows.append(("error", _one_line(str(metrics["error"])) + where))
    return rows


def _figures(values: dict) -> str:
    return "  ".join(
        f"{name} {fmt(value) if isinstance(value, float) else value}"
        for name, value in values.items()
        if name not in ("reason",)
    )


# -- attach, ctl -------------------------------------------------------------------


@cli.command()
@click.argument("run_ref", metavar="RUN", required=False)
def attach(run_ref: str | None) -> int:
    """Open the TUI on RUN (default: the newest live run)."""
    handle = client.find_run(run_ref)  # a bad ref ends here, before the TUI starts
    from tui.app import run_app

    return run_app(attach=handle.run_id)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("command", metavar="COMMAND")
@click.argument("argument", metavar="[ARG]", required=False)
def ctl(run_ref: str, command: str, argument: str | None) -> int:
    """Send COMMAND to RUN's worker and print the reply (a JSON line).

    COMMAND is one of pause, resume, stop, checkpoint, status, or remedy NAME
    with NAME one of halve-batch, halve-accumulate, mixed-precision, resnet18.
    """
    args = _control_args(command, argument)
    handle = client.find_run(run_ref)
    status = handle.summary().status
    if status not in client.LIVE_STATUSES:
        raise ConfigError(
            f"run {handle.run_id} is {status}: no worker to take {command!r}"
            + (
                f" (continue it with `convdeck resume {handle.run_id}`)"
                if status in ("stopped", "failed", "crashed")
                else ""
            )
        )
    reply = handle.command_sync(command, **args)
    click.echo(json.dumps(reply))
    if reply.get("ok"):
        return EXIT_DONE
    _error(_one_line(str(reply.get("error", "the worker said no"))))
    return EXIT_FAILED if reply.get("unreachable") else EXIT_USAGE


def _control_args(command: str, argument: str | None) -> dict:
    """Check a ctl command and its argument before touching the run."""
    if command not in client.CONTROL_COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, client.CONTROL_COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown command {command!r}{hint}; expected one of "
            f"{', '.join(client.CONTROL_COMMANDS)}"
        )
    if command == "remedy":
        if argument not in client.REMEDIES:
            got = f"got {argument!r}" if argument else "missing"
            raise ConfigError(f"remedy NAME {got}; expected one of {', '.join(client.REMEDIES)}")
        return {"name": argument}
    if argument is not None:
        raise ConfigError(f"{command!r} takes no argument; got {argument!r}")
    return {}


# -- output helpers ------------------------------------------------------------------


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded with spaces: readable, and plain text for grep and awk."""
    table = [tuple(headers)] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        click.echo("  ".join([*padded, row[-1]]).rstrip())


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _error(message: str) -> None:
    user_error(message)


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: run the CLI and turn a user's mistake into one line and exit 2."""
    sys.exit(_main(argv))


def _main(argv: Sequence[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="convdeck", standalone_mode=False)
    except ConfigError as error:
        _error(str(error))
        return EXIT_USAGE
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else "convdeck"
        _error(f"{error.format_message().rstrip('.')}; see `{where} --help`")
        return EXIT_USAGE
    except click.ClickException as error:
        _error(error.format_message())
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_DONE


if __name__ == "__main__":
    main()
