"""``convdeck rm`` and ``convdeck prune``: tidy the run store, never touching a live run."""

from __future__ import annotations

import click

from engine.run import tidy
from tui.cli.common import EXIT_DONE


@click.command()
@click.argument("run_refs", metavar="RUN...", nargs=-1, required=True)
def rm(run_refs: tuple[str, ...]) -> int:
    """Remove each RUN (an id or a unique prefix) and everything in its directory.

    Nothing is removed when any RUN is unknown, ambiguous or still running.
    """
    for removal in tidy.remove_runs(list(run_refs)):
        click.echo(f"removed {removal.run_id} ({removal.status})")
    return EXIT_DONE


@click.command()
@click.option("--failed", is_flag=True, help="Runs that failed (crashed runs are kept: they may resume).")
@click.option("--older-than", "older_than", metavar="AGE", help="Runs not written to for AGE: 30m, 12h, 7d, 2w.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def prune(failed: bool, older_than: str | None, dry_run: bool) -> int:
    """Remove the runs that match every filter given. Live runs are never removed."""
    age = tidy.parse_age(older_than) if older_than is not None else None
    removals = tidy.prune_runs(failed=failed, older_than=age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for removal in removals:
        click.echo(f"{verb} {removal.run_id} ({removal.status}, idle {tidy.format_age(removal.idle_seconds)})")
    if not removals:
        click.echo("nothing to prune")
    return EXIT_DONE
