"""``convdeck export RUN``: a run's scalars as CSV or JSON lines, its weights as a Keras model."""

from __future__ import annotations

import click

from engine.errors import ConfigError
from engine.run import client
from engine.run.export import (
    COLUMNS,
    check_model_targets,
    export_model_in_subprocess,
    export_table,
    weights_to_export,
)
from tui.cli.common import EXIT_DONE


@click.command("export")
@click.argument("run_ref", metavar="RUN")
@click.option("--csv", "csv_file", metavar="FILE", help="Every scalar, one row per step, as CSV (- for stdout).")
@click.option(
    "--json",
    "json_file",
    metavar="FILE",
    help="The same rows as JSON lines: one object per step, every column a key, null where empty "
    "(NaN and inf too) (- for stdout).",
)
@click.option("--keras", "keras_file", metavar="FILE", help="The best weights (else the last) as a .keras file.")
@click.option("--savedmodel", "savedmodel_dir", metavar="DIR", help="The best weights (else the last) as a SavedModel.")
def export(
    run_ref: str, csv_file: str | None, json_file: str | None, keras_file: str | None, savedmodel_dir: str | None
) -> int:
    """Export RUN: its scalars (--csv, --json) and its weights (--keras, --savedmodel).

    The table has one row per step; an epoch's means and validation, a
    validation inside an epoch, and an evaluation go on the row of the step
    they came at. Columns: step, epoch, time, loss, accuracy, learning_rate,
    images_per_sec, step_time, epoch_loss, epoch_accuracy, val_loss,
    val_accuracy, eval_split, eval_weights, eval_loss, eval_accuracy,
    eval_top5_accuracy.
    """
    if not any((csv_file, json_file, keras_file, savedmodel_dir)):
        raise ConfigError("export what? give --csv FILE, --json FILE, --keras FILE or --savedmodel DIR")
    handle = client.find_run(run_ref)
    if keras_file or savedmodel_dir:
        # Refuse bad targets before the table is written and before TensorFlow loads.
        check_model_targets(keras_file, savedmodel_dir)
        weights, note = weights_to_export(handle.run_dir)
    outputs = {kind: path for kind, path in (("csv", csv_file), ("json", json_file)) if path}
    if outputs:
        rows = export_table(handle.run_dir, outputs)
        for path in outputs.values():
            if path != "-":
                click.echo(f"{path}: {rows} rows, {len(COLUMNS)} columns", err=True)
    if keras_file or savedmodel_dir:
        if note:
            click.echo(note, err=True)
        export_model_in_subprocess(handle.run_dir, weights, keras_file, savedmodel_dir)
        for target in (keras_file, savedmodel_dir):
            if target:
                click.echo(f"{target}: {weights} weights of {handle.run_id}", err=True)
    return EXIT_DONE
