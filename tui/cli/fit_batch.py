"""``convdeck fit-batch``: the largest batch that really trains here."""

from __future__ import annotations

import json
from typing import Any

import click

from engine.config import ConfigError
from engine.presets import DEFAULT_PRESET, load_preset
from engine.run import client
from tui.cli.common import (
    EXIT_DONE,
    EXIT_FAILED,
    set_option,
)
from tui.progress import fmt
from tui.terminal import one_line as _one_line
from tui.terminal import user_error


@click.command("fit-batch")
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
        user_error(
            f"the trial at batch {error.batch_size} failed: {error.detail} "
            f"(run `convdeck run {config.name} --set train.batch_size={error.batch_size}` "
            "to see the traceback)"
        )
        return EXIT_FAILED
    if result.largest == 0:
        user_error(
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


