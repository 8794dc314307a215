"""The ``convdeck`` command line: the TUI by default, and headless commands for scripts.

Every command talks to runs through :mod:`engine.run.client`; training happens
in the detached worker, never here. A user's mistake (bad preset, field,
run id, command) ends in one line on stderr and exit code 2; a bug still
shows its traceback. Exit codes: 0 done, 1 the run failed, 2 bad usage or
input, 130 interrupted.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from engine.config import ConfigError
from tui.cli import evaluate, export, fit_batch, follow, listing, lr_find, notify, queue, steer, sweep, tidy
from tui.cli.common import EXIT_DONE, EXIT_INTERRUPTED, EXIT_USAGE
from tui.terminal import user_error


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="convdeck", prog_name="convdeck", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> int:
    """Train convolutional networks from the terminal. Without a command: the TUI."""
    if ctx.invoked_subcommand is None:
        from tui.app import run_app

        return run_app()
    return EXIT_DONE


for _command in (
    follow.run,
    follow.resume,
    fit_batch.fit_batch,
    lr_find.lr_find,
    listing.presets,
    listing.runs,
    listing.show,
    steer.attach,
    steer.ctl,
    queue.queue,
    sweep.sweep,
    notify.notify,
    evaluate.evaluate,
    export.export,
    tidy.rm,
    tidy.prune,
):
    cli.add_command(_command)


# -- entry point -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: run the CLI and turn a user's mistake into one line and exit 2."""
    sys.exit(_main(argv))


def _main(argv: Sequence[str] | None) -> int:
    try:
        code = cli.main(args=argv, prog_name="convdeck", standalone_mode=False)
    except ConfigError as error:
        user_error(str(error))
        return EXIT_USAGE
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx else "convdeck"
        user_error(f"{error.format_message().rstrip('.')}; see `{where} --help`")
        return EXIT_USAGE
    except click.ClickException as error:
        user_error(error.format_message())
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_DONE


if __name__ == "__main__":
    main()
