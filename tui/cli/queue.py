"""``convdeck queue``: line runs up and have a detached runner work through them."""

from __future__ import annotations

import click

from engine.presets import load_preset
from engine.run.queue import ENDED, RunQueue
from engine.run.queue_eta import queue_eta, run_figures
from engine.run.queue_runner import runner_pid, start_runner
from tui.cli.common import EXIT_DONE, print_json, print_table, set_option
from tui.progress import fmt_duration


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON array.")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> int:
    """The run queue. Without a command: list it (position, preset, settings, state, run)."""
    if ctx.invoked_subcommand is None:
        return show_queue(as_json)
    return EXIT_DONE


def show_queue(as_json: bool) -> int:
    store = RunQueue()
    entries = store.entries()
    if as_json:
        print_json([entry.as_json() for entry in entries])
        return EXIT_DONE
    if not entries:
        click.echo("the queue is empty; add a run with `convdeck queue add PRESET`")
        return EXIT_DONE
    rows = []
    waiting = 0
    for entry in entries:
        if entry.state == "queued":
            waiting += 1
        place = str(waiting) if entry.state == "queued" else "-"
        state = entry.outcome if entry.state == ENDED else entry.state
        rows.append((place, entry.id, entry.preset, " ".join(entry.overrides) or "-", state, entry.run_id or "-"))
    print_table(("#", "ID", "PRESET", "SETTINGS", "STATE", "RUN"), rows)
    pid = runner_pid()
    paused = " (paused: `convdeck queue resume` goes on)" if store.paused() else ""
    click.echo(f"runner: {'pid ' + str(pid) if pid else 'not running'}{paused}", err=True)
    eta = queue_eta(entries, *run_figures(None))
    click.echo(
        f"left: {fmt_duration(eta.total)} (running {fmt_duration(eta.running)}, "
        f"waiting {fmt_duration(eta.waiting)}; a waiting run counts as long as its preset's finished ones)",
        err=True,
    )
    return EXIT_DONE


@queue.command("add")
@click.argument("preset")
@set_option("--set train.batch_size=64 (a TOML value)")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs this run takes.")
def add(preset: str, overrides: tuple[str, ...], gpus: int) -> int:
    """Queue a run of PRESET; it starts when a GPU (or the CPU) is free."""
    load_preset(preset, overrides)  # a wrong preset or --set is one line now, not at 3 a.m.
    entry = RunQueue().add(preset, overrides, gpus=gpus)
    start_runner()
    click.echo(entry.id)
    return EXIT_DONE


@queue.command("rm")
@click.argument("entry_id", metavar="ID", type=int)
def remove(entry_id: int) -> int:
    """Take a waiting entry out of the queue."""
    entry = RunQueue().remove(entry_id)
    click.echo(f"removed entry {entry.id} ({entry.preset})", err=True)
    return EXIT_DONE


@queue.command("move")
@click.argument("entry_id", metavar="ID", type=int)
@click.argument("place", metavar="POS", type=int)
def move(entry_id: int, place: int) -> int:
    """Move a waiting entry to POS (1 starts next)."""
    RunQueue().move(entry_id, place)
    return show_queue(False)


@queue.command("pause")
def pause() -> int:
    """Start no new runs (the running ones go on)."""
    RunQueue().set_paused(True)
    click.echo("queue paused: running runs go on, no new one starts", err=True)
    return EXIT_DONE


@queue.command("resume")
def resume() -> int:
    """Start runs again (and a runner, if none works the queue)."""
    RunQueue().set_paused(False)
    pid = start_runner()
    click.echo(f"queue resumed (runner pid {pid})", err=True)
    return EXIT_DONE
