"""``convdeck lr-find``: the learning-rate range test, and the rate it suggests."""

from __future__ import annotations

import json
import shlex
import sys
from typing import TYPE_CHECKING

import click

from engine.lr_range import DEFAULT_END, DEFAULT_START, DEFAULT_STEPS
from engine.presets import DEFAULT_PRESET, load_preset
from engine.run import client
from tui.cli.common import EXIT_DONE, EXIT_FAILED, set_option
from tui.terminal import user_error

if TYPE_CHECKING:
    from engine.run.lr_find import CurvePoint, RangeTest

CHART_WIDTH, CHART_HEIGHT = 80, 16


@click.command("lr-find")
@click.argument("preset", required=False, default=DEFAULT_PRESET)
@set_option("--set train.batch_size=64")
@click.option(
    "--steps",
    type=int,
    default=DEFAULT_STEPS,
    show_default=True,
    metavar="N",
    help="Steps from --start to --end, one batch each.",
)
@click.option("--start", type=float, default=DEFAULT_START, show_default=True, metavar="RATE", help="The first rate.")
@click.option("--end", type=float, default=DEFAULT_END, show_default=True, metavar="RATE", help="The last rate.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve and the suggestion as one JSON object.")
def lr_find(preset: str, overrides: tuple[str, ...], steps: int, start: float, end: float, as_json: bool) -> int:
    """The learning-rate range test of PRESET, and the rate it suggests.

    A throwaway run in a process of its own raises the rate exponentially
    from --start to --end, one batch a step, and stops once the smoothed loss
    passes 4x its minimum. The suggestion is fastai's valley: a little past
    the middle of the longest stretch where the loss falls. Nothing is saved.
    """
    from engine.run.lr_find import RangeTestFailed, check_arguments, find_learning_rate

    check_arguments(steps, start, end)
    config = load_preset(preset, overrides)
    client.preflight(config)
    on_terminal = sys.stdout.isatty() and not as_json
    if not as_json:
        click.echo(
            f"lr-find {config.name}: the rate from {start:g} to {end:g} over {steps} steps of batch "
            f"{config.train.batch_size}, in a throwaway process"
        )
    show_progress = _progress(steps) if on_terminal else None
    try:
        test = find_learning_rate(config, steps, start, end, on_point=show_progress)
    except RangeTestFailed as error:
        user_error(f"lr-find {config.name} failed: {error}")
        return EXIT_FAILED
    finally:
        _end_progress(on_terminal)
    if as_json:
        click.echo(json.dumps(test.as_dict()))
        return EXIT_DONE
    if on_terminal:
        _print_chart(test)
    for line in summary(test, overrides):
        click.echo(line)
    return EXIT_DONE


def summary(test: RangeTest, overrides: tuple[str, ...] = ()) -> list[str]:
    """The lines after the curve: why it stopped, the suggestion, the command to use it, the cost."""
    from engine.run.lr_find import STOP_REASONS

    last = test.points[-1]
    found = test.suggestion
    steepest = f"; the loss falls fastest at {found.steepest_rate:.2g}" if found.steepest_rate else ""
    kept = [o for o in overrides if not o.replace(" ", "").startswith("train.learning_rate=")]
    sets = [*kept, f"train.learning_rate={test.suggested_rate:g}"]
    command = " ".join(["convdeck", "run", test.preset, *(f"--set {shlex.quote(s)}" for s in sets)])
    startup = f", {test.startup_seconds:.1f} s of it TensorFlow start-up" if test.startup_seconds else ""
    return [
        f"stopped after {len(test.points)} steps at rate {last.learning_rate:.2g}: {STOP_REASONS[test.stopped]}",
        f"suggested: train.learning_rate = {test.suggested_rate:g} (the valley){steepest}",
        f"  {command}",
        f"{len(test.points)} steps in {test.seconds:.1f} s{startup}",
    ]


def _progress(steps: int):
    def show(point: CurvePoint) -> None:
        loss = f"{point.smoothed:.4f}" if point.smoothed is not None else "NaN"
        click.echo(f"\r  step {point.step}/{steps}  rate {point.learning_rate:.2g}  loss {loss}   ", nl=False, err=True)

    return show


def _end_progress(on_terminal: bool) -> None:
    if on_terminal:
        click.echo("\r\033[K", nl=False, err=True)


def _print_chart(test: RangeTest) -> None:
    from rich.console import Console

    from tui.lr_curve import draw_curve

    console = Console()
    width = min(CHART_WIDTH, console.width)
    console.print(draw_curve(test.points, test.suggestion, width, CHART_HEIGHT), soft_wrap=True)
