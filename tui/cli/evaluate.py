"""``convdeck eval RUN``: loss, accuracy, the confusion matrix and per-class figures of a run."""

from __future__ import annotations

import click

from engine.evaluation import EvalReport
from engine.run import client
from engine.run.eval_job import evaluate_in_subprocess
from tui.cli.common import EXIT_DONE, print_json, print_table

MATRIX_MAX_CLASSES = 20


@click.command("eval")
@click.argument("run_ref", metavar="RUN")
@click.option("--weights", type=click.Choice(["last", "best"]), default="last", show_default=True)
@click.option("--split", default="validation", show_default=True, help="validation or train.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def evaluate(run_ref: str, weights: str, split: str, as_json: bool) -> int:
    """Evaluate RUN's weights: loss, accuracy, top-5, confusion matrix, per-class P/R/F1."""
    handle = client.find_run(run_ref)
    report = evaluate_in_subprocess(handle.run_dir, weights, split)
    if as_json:
        print_json(report.as_json())
        return EXIT_DONE
    print_report(handle.run_id, report)
    return EXIT_DONE


def print_report(run_id: str, report: EvalReport) -> None:
    top5 = f"  top-5 {report.top5_accuracy:.4f}" if report.top5_accuracy is not None else ""
    click.echo(
        f"{run_id}  {report.weights} weights on {report.split} ({report.examples} examples)\n"
        f"loss {report.loss:.4f}  accuracy {report.accuracy:.4f}{top5}\n"
    )
    rows = [
        (c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support)
        for c in report.worst_classes()
    ]
    print_table(("CLASS", "PRECISION", "RECALL", "F1", "SUPPORT"), rows)
    if len(report.class_names) <= MATRIX_MAX_CLASSES:
        click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
        names = [n[:6] for n in report.class_names]
        print_table(["", *names], [[name, *row] for name, row in zip(names, report.confusion, strict=True)])
    else:
        click.echo(f"\n{len(report.class_names)} classes: the matrix is in `--json` and the TUI's Eval view")
