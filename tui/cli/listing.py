"""``convdeck presets``, ``runs`` and ``show``: what is there, and how each run stands."""

from __future__ import annotations

import time
from typing import Any

import click

from engine.config import config_to_toml
from engine.presets import list_presets
from engine.run import client
from tui.cli.common import (
    EXIT_DONE,
    print_json,
    print_table,
)
from tui.progress import fmt
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
    """List the runs: id, preset, status, epoch/step, last loss, started."""
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
            s.status,
            f"{s.epoch}/{s.step}",
            fmt(s.last_loss),
            fmt(s.val_accuracy),
            _when(s.started),
        )
        for s in summaries
    ]
    print_table(("ID", "PRESET", "STATUS", "EPOCH/STEP", "LOSS", "VAL_ACC", "STARTED"), rows)
    crashes = [s for s in summaries if s.status == "crashed" and s.reason]
    if crashes:
        click.echo("")
    for summary in crashes:
        click.echo(f"{summary.run_id} crashed: {_one_line(summary.reason)}")
    return EXIT_DONE


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(run_ref: str, as_json: bool) -> int:
    """One run's status, config, best and last metrics."""
    handle = client.find_run(run_ref)
    config = handle.config()
    summary, metrics = handle.summary(), handle.metrics()
    if as_json:
        print_json(
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


