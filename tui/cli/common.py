"""What every command shares: exit codes, the ``--set`` option, tables and JSON out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def set_option(example: str):
    """The ``--set KEY=VALUE`` option of the commands that build a config."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help=f"Override a config field, e.g. {example}.",
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded with spaces: readable, and plain text for grep and awk."""
    table = [tuple(headers)] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        click.echo("  ".join([*padded, row[-1]]).rstrip())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
