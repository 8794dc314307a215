"""``convdeck presets``, ``runs`` and ``show``: what is there, and how each run stands."""

from __future__ import annotations

import time
from typing import Any

import click

from engine.config import config_to_toml
from engine.presets import list_presets
from engine.run import client
from engine.run.facts import PHASE_WORDS, RunFacts
from tui.cli.common import (
    EXIT_DONE,
    print_json,
    print_table,
)
from tui.progress import fmt, fmt_duration, fmt_rate
from tui.terminal import one_line as _one_line


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def presets(as_json: bool) -> int:
    """List the presets: name, model, dataset, description."""
    infos = list_presets()
    if as_json:
        print_json([_preset_json(info) for info in infos])
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
    print_table(("NAME", "MODEL", "DATASET", "DESCRIPTION"), rows)
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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs(as_json: bool) -> int:
    """List the runs: id, preset, model, status, epoch/step, last loss, started."""
    summaries = client.list_runs()
    if as_json:
        print_json([summary.as_json() for summary in summaries])
        return EXIT_DONE
    if not summaries:
        click.echo("no runs yet; start one with `convdeck run`")
        return EXIT_DONE
    rows = [
        (
            s.run_id,
            s.preset,
            s.model,
            s.status,
            f"{s.epoch}/{s.step}",
            fmt(s.last_loss),
            fmt(s.val_accuracy),
            _when(s.started),
        )
        for s in summaries
    ]
    print_table(
        ("ID", "PRESET", "MODEL", "STATUS", "EPOCH/STEP", "LOSS", "VAL_ACC", "STARTED"), rows
    )
    notes = [f"{s.run_id} crashed: {_one_line(s.reason)}" for s in summaries if s.status == "crashed"]
    notes += [f"{s.run_id}: {_unreadable(s.unreadable_lines)}" for s in summaries if s.unreadable_lines]
    if notes:
        click.echo("")
    for note in notes:
        click.echo(note)
    return EXIT_DONE


def _unreadable(count: int) -> str:
    return f"{count} torn, garbage or wrong-typed lines in events.jsonl were skipped"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(run_ref: str, as_json: bool) -> int:
    """One run's status, config, best and last metrics."""
    handle = client.find_run(run_ref)
    config = handle.config()
    facts = handle.summary()
    if as_json:
        print_json(
            {
                "summary": facts.as_json(),
                "metrics": facts.metrics_json(),
                "config": config.model_dump(mode="json"),
            }
        )
        return EXIT_DONE
    for label, value in _show_rows(facts):
        click.echo(f"{label:<11} {value}")
    click.echo("config:")
    click.echo("".join(f"  {line}\n" for line in config_to_toml(config).splitlines()), nl=False)
    return EXIT_DONE


def _show_rows(facts: RunFacts) -> list[tuple[str, str]]:
    status = facts.status + (f" ({_one_line(facts.reason)})" if facts.reason else "")
    if facts.live and facts.phase not in ("training", facts.status):
        status += f", {PHASE_WORDS[facts.phase]}"
    model = facts.model + (f" (config revision {facts.revision})" if facts.revision else "")
    rows = [
        ("run", facts.run_id),
        ("directory", str(facts.run_dir)),
        ("status", status),
        ("preset", facts.preset),
        ("model", model),
        ("started", _when(facts.started) if facts.started else "not yet"),
        ("progress", _progress(facts)),
    ]
    if facts.pid and facts.live:
        rows.append(("worker", f"pid {facts.pid}"))
    return rows + _metric_rows(facts)


def _progress(facts: RunFacts) -> str:
    if not facts.step and not facts.epoch:
        return "no step yet"
    epochs = f"/{facts.epochs}" if facts.epochs else ""
    total = f"/{facts.total_steps}" if facts.total_steps else ""
    text = f"epoch {facts.epoch}{epochs}, step {facts.step}{total}"
    if facts.images_per_sec:
        text += f", {fmt_rate(facts.images_per_sec)}"
    eta = facts.eta_seconds()
    if facts.status == "running" and eta is not None:
        text += f", ETA {fmt_duration(eta)}"
    return text


def _metric_rows(facts: RunFacts) -> list[tuple[str, str]]:
    metrics = facts.metrics_json(strict=False)  # for people: an infinite loss says inf
    rows = []
    if metrics["last_step"]:
        rows.append(("last step", _figures(metrics["last_step"])))
    if metrics["last_epoch"]:
        rows.append(("last epoch", _figures(metrics["last_epoch"])))
    if best := metrics["best"]:
        epoch = _known(best["epoch"])
        rows.append(("best", f"val_accuracy {fmt(best['val_accuracy'])} at epoch {epoch}"))
    if final := metrics["final"]:
        rows.append(("final", _figures(final)))
    if checkpoint := metrics["checkpoint"]:
        where = f": {checkpoint['path']}" if checkpoint.get("path") else ""
        rows.append(("checkpoint", f"step {_known(checkpoint.get('step'))}{where}"))
    if facts.resumes or facts.remedies:
        remedies = ", ".join(facts.remedies) or "none"
        rows.append(("history", f"resumed {facts.resumes}x; remedies: {remedies}"))
    if facts.unreadable_lines:
        rows.append(("warning", _unreadable(facts.unreadable_lines)))
    if failure := facts.failure:
        where = f" (traceback: {failure.traceback_path})" if failure.traceback_path else ""
        rows.append(("error", _one_line(failure.error or "unknown error") + where))
    return rows


def _known(value: object) -> str:
    return "?" if value is None else str(value)


# Figures whose name alone does not say their unit, or that read better in words.
_FIGURE_TEXT = {
    "steps": lambda value: f"{value:,} steps",
    "elapsed": lambda value: f"elapsed {fmt_duration(value)}",
    "learning_rate": lambda value: f"learning_rate {value:.3g}",
    "images_per_sec": fmt_rate,
    "step_time": lambda value: f"{value * 1000:.1f} ms a step",
    "train_examples": lambda value: f"over {value:,} examples",
}


def _figures(values: dict) -> str:
    """``step 88  epoch 2  loss 0.1293  learning_rate 0.002  9,759 img/s``: units said, None as '-'."""
    parts = []
    for name, value in values.items():
        if name == "reason":
            continue  # the status line says it
        if value is None:
            parts.append(f"{name} -")
        elif name in _FIGURE_TEXT and isinstance(value, (int, float)):
            parts.append(_FIGURE_TEXT[name](value))
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name} {value}")  # a count, not a measure: no decimals
        else:
            parts.append(f"{name} {fmt(value)}")
    return "  ".join(parts) or "-"
