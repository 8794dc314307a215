"""``convdeck sweep``: an Optuna study whose trials are ordinary runs, worked by the queue runner."""

from __future__ import annotations

import time
from dataclasses import asdict

import click

from engine.run.queue import RunQueue
from engine.run.queue_eta import queue_eta, run_figures
from engine.run.queue_runner import start_runner
from engine.run.sweep import METRIC_DIRECTIONS, PRUNERS, SAMPLERS, Sweep, SweepSpec
from engine.run.sweep_space import KINDS, check_against, parse_space
from tui.cli.common import EXIT_DONE, print_json, print_table, set_option
from tui.progress import fmt_duration


class _SweepGroup(click.Group):
    """``sweep PRESET ...`` starts a sweep; ``sweep show NAME`` shows one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SweepGroup)
def sweep() -> int:
    """Search settings with Optuna: `sweep PRESET --grid K=[..] --trials N`, `sweep show NAME`."""
    return EXIT_DONE


def _space_option(kind: str, example: str):
    return click.option(f"--{kind}", kind, multiple=True, metavar="KEY=VALUE", help=f"e.g. {example}")


@sweep.command("start")
@click.argument("preset")
@_space_option("grid", "train.learning_rate=[1e-3,3e-3]")
@_space_option("choice", "train.batch_size=[32,64,128]")
@_space_option("uniform", "train.label_smoothing=0:0.2")
@_space_option("loguniform", "train.weight_decay=1e-5:1e-3")
@set_option("--set train.epochs=5 (fixed for every trial)")
@click.option("--trials", type=int, default=20, show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
@click.option("--prune", type=click.Choice(PRUNERS), default="none", show_default=True)
@click.option("--metric", type=click.Choice(list(METRIC_DIRECTIONS)), default="val_accuracy", show_default=True)
@click.option("--name", default=None, help="The study's name (default: PRESET and the time).")
@click.option("--storage", default=None, help="An Optuna storage URL, e.g. postgresql://user:pw@host/db.")
def start(preset: str, overrides: tuple[str, ...], trials: int, sampler: str, prune: str, metric: str,
          name: str | None, storage: str | None, **space: tuple[str, ...]) -> int:
    """Start (or join, with the same options) a sweep of PRESET; prints its name."""
    params = parse_space({kind: list(space.get(kind, ())) for kind in KINDS})
    check_against(params, preset, overrides)
    spec = SweepSpec(preset, list(overrides), [asdict(p) for p in params], trials, sampler, prune, metric)
    name = name or f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    study = Sweep.create(name, spec, storage)
    RunQueue().add_sweep(name, storage)
    start_runner()
    click.echo(study.name)
    return EXIT_DONE


@sweep.command("show")
@click.argument("name")
@click.option("--storage", default=None, help="The storage URL the sweep was started with.")
@click.option("--json", "as_json", is_flag=True, help="Print the trials as a JSON array.")
def show(name: str, storage: str | None, as_json: bool) -> int:
    """The trials of sweep NAME, best first, with only the settings that vary."""
    if storage is None:
        storage = _known_storage(name)
    study = Sweep(name, storage)
    rows = study.rows()
    if as_json:
        print_json(rows)
        return EXIT_DONE
    if not rows:
        click.echo(f"sweep {name}: no trial yet")
        return EXIT_DONE
    headers = list(rows[0])
    print_table([h.upper() for h in headers], [[_cell(row[h]) for h in headers] for row in rows])
    done = "done" if study.done() else "in progress"
    entries = [e for e in RunQueue().entries() if e.sweep == name]
    eta = queue_eta(entries, *run_figures(None), not_yet_queued=max(0, study.spec.trials - len(rows)))
    left = "" if study.done() else f", about {fmt_duration(eta.total)} left"
    click.echo(f"sweep {name}: {len(rows)} of {study.spec.trials} trials, {done}{left}", err=True)
    return EXIT_DONE


def _known_storage(name: str) -> str | None:
    """A sweep this home's queue works knows its storage; others are in the default one."""
    return dict(RunQueue().sweeps()).get(name)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
