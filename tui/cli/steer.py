"""``convdeck attach`` and ``convdeck ctl``: open a run in the TUI, or send it a command."""

from __future__ import annotations

import json

import click

from engine.config import ConfigError
from engine.remedies import REMEDIES, check_remedy
from engine.run import client
from tui.cli.common import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_USAGE,
)
from tui.terminal import one_line as _one_line
from tui.terminal import user_error


@click.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
def attach(run_ref: str | None) -> int:
    """Open the TUI on RUN (default: the newest live run)."""
    handle = client.find_run(run_ref)  # a bad ref ends here, before the TUI starts
    from tui.app import run_app

    return run_app(attach=handle.run_id)


@click.command(
    help="Send COMMAND to RUN's worker and print the reply (a JSON line).\n\n"
    f"COMMAND is one of {', '.join(c for c in client.CONTROL_COMMANDS if c != 'remedy')}, "
    f"or remedy NAME with NAME one of {', '.join(REMEDIES)}. "
    'The reply to status carries the run\'s facts under "run" (as `runs --json`).'
)
@click.argument("run_ref", metavar="RUN")
@click.argument("command", metavar="COMMAND")
@click.argument("argument", metavar="[ARG]", required=False)
def ctl(run_ref: str, command: str, argument: str | None) -> int:
    """Send COMMAND to RUN's worker and print the reply (the help lists the commands)."""
    args = _control_args(command, argument)
    handle = client.find_run(run_ref)
    facts = handle.summary()
    status = facts.status
    if status not in client.LIVE_STATUSES:
        raise ConfigError(
            f"run {handle.run_id} is {status}: no worker to take {command!r}"
            + (
                f" (continue it with `convdeck resume {handle.run_id}`)"
                if status in ("stopped", "failed", "crashed")
                else ""
            )
        )
    reply = handle.command_sync(command, **args)
    if command == "stacks" and reply.get("ok"):
        # Where each thread is, as Python prints a traceback: read by a person, not a script.
        click.echo(reply["stacks"].rstrip())
        click.echo(f"(also appended to {handle.log_path})", err=True)
        return EXIT_DONE
    if command == "status" and reply.get("ok"):
        reply = {**reply, "run": facts.as_json()}
    click.echo(json.dumps(reply))
    if reply.get("ok"):
        return EXIT_DONE
    user_error(_one_line(str(reply.get("error", "the worker said no"))))
    return EXIT_FAILED if reply.get("unreachable") else EXIT_USAGE


def _control_args(command: str, argument: str | None) -> dict:
    """Check a ctl command and its argument before touching the run."""
    if command not in client.CONTROL_COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, client.CONTROL_COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown command {command!r}{hint}; expected one of "
            f"{', '.join(client.CONTROL_COMMANDS)}"
        )
    if command == "remedy":
        return {"name": check_remedy(argument)}
    if argument is not None:
        raise ConfigError(f"{command!r} takes no argument; got {argument!r}")
    return {}


