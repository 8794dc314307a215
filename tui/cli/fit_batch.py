"""``convdeck fit-batch``: the batch to train with here, found by real steps."""

from __future__ import annotations

import json
from dataclasses import asdict
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
    help="The largest batch to try (default 4096; never above the training set).",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    metavar="K",
    help="Timed steps per trial, after an untimed warm-up step (default 5); images/s is their median.",
)
@click.option(
    "--headroom",
    default=None,
    metavar="PCT",
    help="Percent taken off the largest batch that fit (default 10).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each trial and the result as JSON.")
def fit_batch(
    preset: str,
    overrides: tuple[str, ...],
    cap: int | None,
    steps: int | None,
    headroom: str | None,
    as_json: bool,
) -> int:
    """Find the batch PRESET should train with here, by real training steps.

    With a GPU, doubles the batch from the preset's until a trial runs out of
    memory, then binary-searches; each trial is a fresh process, and the
    suggestion keeps a headroom. Without one there is no device memory to
    search: images/s is measured at a few sizes instead, in one process.
    """
    from engine import fitbatch

    cap = fitbatch.DEFAULT_CAP if cap is None else cap
    steps = fitbatch.DEFAULT_TIMED_STEPS if steps is None else steps
    if cap < 1:
        raise ConfigError(f"--max: got {cap}; expected a batch size of at least 1")
    if steps < 1:
        raise ConfigError(f"--steps: got {steps}; expected at least 1")
    percent = _headroom(headroom, fitbatch.DEFAULT_HEADROOM)
    config = load_preset(preset, overrides)
    client.preflight(config)
    mode = fitbatch.choose_mode()
    if not as_json:
        click.echo(_header(config.name, mode, min(config.train.batch_size, cap), cap, steps))

    def show(trial: Any) -> None:
        click.echo(json.dumps({"trial": asdict(trial)}) if as_json else _trial_line(trial))

    def switched(reason: str) -> None:
        if not as_json:
            click.echo(f"{reason}: no device memory to search; measuring images/s instead")

    result = fitbatch.find_batch(config, mode, cap, percent, steps, show, switched)
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
        smallest = min(t.batch_size for t in result.trials)
        user_error(
            f"not even batch {smallest} fits ({result.trials[-1].detail}); try "
            "--set train.mixed_precision=true, smaller images or a smaller model"
        )
        return EXIT_FAILED
    if not as_json:
        for line in _summary(config.name, result):
            click.echo(line)
    return EXIT_DONE


def _headroom(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        percent = float(text.strip().removesuffix("%"))
    except ValueError:
        percent = -1.0
    if not 0.0 <= percent < 100.0:
        raise ConfigError(f"--headroom: got {text!r}; expected a percent from 0 to under 100, e.g. 10")
    return percent


def _header(name: str, mode: Any, start: int, cap: int, steps: int) -> str:
    from engine.fitbatch import MEMORY, throughput_sizes

    trial = f"a warm-up step, a validation batch and {steps} timed step{'s' if steps != 1 else ''}"
    if mode.name == MEMORY:
        return (
            f"fit-batch {name}: searching device memory ({mode.reason}) from batch {start} "
            f"up to {cap}; each trial a fresh process: {trial}"
        )
    sizes = ", ".join(str(size) for size in throughput_sizes(start, cap))
    return (
        f"fit-batch {name}: no device memory to search ({mode.reason}); measuring images/s "
        f"at batch {sizes} in one process: {trial} each"
    )


def _trial_line(trial: Any) -> str:
    if trial.error:
        outcome = "error"
    elif trial.beyond_data:
        outcome = "beyond data"
    else:
        outcome = "fits" if trial.fits else "out of memory"
    extra = []
    if trial.fits and trial.images_per_sec:
        extra.append(f"{trial.images_per_sec:,.0f} img/s (median of {trial.timed_steps})")
    if trial.peak_bytes:
        extra.append(f"peak {trial.peak_bytes / (1 << 30):.2f} GiB")
    if not trial.fits and trial.detail:
        extra.append(_one_line(trial.detail)[:100])
    seconds = f"{trial.seconds:.1f} s"
    if trial.startup_seconds:
        seconds += f" (+{trial.startup_seconds:.1f} s start-up)"
    extra.append(seconds)
    return f"  batch {trial.batch_size:>6}  {outcome:<13}  " + "  ".join(extra)


def _summary(name: str, result: Any) -> list[str]:
    from engine.fitbatch import BOUND_DATA, MEMORY

    lines = []
    fastest = result.fastest_trial
    if result.limited_by_memory and result.mode == MEMORY:
        lines.append(f"largest that fit: {result.largest} (batch {result.first_failure} ran out of memory)")
        why = f"largest that fit {result.largest}, minus {result.headroom:g}% headroom"
    else:
        if result.mode == MEMORY:
            lines.append(f"no batch ran out of memory up to {result.largest}")
        if result.bound == BOUND_DATA and result.largest == result.cap:
            lines.append(
                f"batch {result.cap} is the most the training set ({result.train_examples} "
                "examples) allows: a batch cannot be larger than the data"
            )
        elif result.mode == MEMORY:
            lines.append(f"that is --max {result.cap}; raise --max to look further")
        why = f"the fastest measured, {fastest.images_per_sec:,.0f} img/s" if fastest else "the largest that fit"
    lines += [
        f"suggested: train.batch_size = {result.suggested} ({why})",
        f"  convdeck run {name} --set train.batch_size={result.suggested}",
        _cost(result),
    ]
    return lines


def _cost(result: Any) -> str:
    processes = sum(1 for t in result.trials if t.startup_seconds is not None) or 1
    startup = sum(t.startup_seconds or 0.0 for t in result.trials)
    total = startup + sum(t.seconds for t in result.trials)
    count = len(result.trials)
    return (
        f"{count} trial{'s' if count != 1 else ''} in {processes} process"
        f"{'es' if processes != 1 else ''}: {total:.1f} s, {startup:.1f} s of it TensorFlow start-up"
    )
