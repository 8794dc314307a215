"""``convdeck notify test``: send one alert to the configured Apprise URLs."""

from __future__ import annotations

import click

from engine.errors import ConfigError
from engine.run.notify import Notifier, NotifySettings, load_settings
from tui.cli.common import EXIT_DONE, EXIT_FAILED
from tui.terminal import user_error


@click.group()
def notify() -> int:
    """Alerts through Apprise ([notify] urls in $CONVDECK_HOME/convdeck.toml)."""
    return EXIT_DONE


@notify.command("test")
@click.option("--url", "urls", multiple=True, help="Send to this Apprise URL too (or only, with no settings).")
def test(urls: tuple[str, ...]) -> int:
    """Send one test alert and say whether it arrived."""
    settings = load_settings().with_urls(urls)
    if not settings.urls:
        raise ConfigError(
            "no alert URLs: add [notify] urls = [\"ntfy://TOPIC\"] to $CONVDECK_HOME/convdeck.toml, or give --url"
        )
    failures: list[str] = []
    # A test goes out whatever `on` leaves out: it checks the URLs, not the choice of alerts.
    notifier = Notifier(NotifySettings(settings.urls), on_failure=failures.append)
    notifier.send("finished", "convdeck test alert", "If you read this, convdeck's alerts reach you.")
    notifier.wait()
    if failures:
        user_error(failures[0])
        return EXIT_FAILED
    click.echo(f"sent to {len(settings.urls)} URL(s)")
    return EXIT_DONE
