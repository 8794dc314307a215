"""Alerts through Apprise: one library for ntfy, Slack, Discord, Telegram, e-mail, JSON webhooks.

Where alerts go is set once per user in ``$CONVDECK_HOME/convdeck.toml``::

    [notify]
    urls = ["ntfy://my-topic", "json://localhost:8080/hook"]
    on = ["finished", "failed", "crashed", "hung", "stalled", "oom_waiting", "nan"]

and per run with ``--notify URL`` (kept in the run's config). URLs are checked
when they are read (``check_urls``), so a typo is one line at the keyboard,
not a silent failure at 3 a.m. Sending happens on a daemon thread with a
timeout: an unreachable server never slows or stops training, and a failed
send is reported once through ``on_failure``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.run.settings import settings_path, user_settings

# Every kind of alert; `on` picks among them. The run's events decide each (engine.run.facts).
ALERT_KINDS = (
    "finished",
    "failed",
    "crashed",
    "hung",
    "stalled",
    "oom_waiting",
    "nan",
    "queue_empty",
    "sweep_done",
)
DEFAULT_ON = ALERT_KINDS
SEND_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class NotifySettings:
    """Where alerts go and which kinds are sent."""

    urls: tuple[str, ...] = ()
    on: tuple[str, ...] = DEFAULT_ON

    def wants(self, kind: str) -> bool:
        return bool(self.urls) and kind in self.on

    def with_urls(self, urls: Iterable[str]) -> NotifySettings:
        """These settings plus a run's own URLs (``--notify``), each once."""
        merged = tuple(dict.fromkeys([*self.urls, *urls]))
        return NotifySettings(check_urls(merged), self.on)


def load_settings(home: Path | None = None) -> NotifySettings:
    """The ``[notify]`` table of ``$CONVDECK_HOME/convdeck.toml`` (no file: no alerts).

    Raises:
        ConfigError: the file is not TOML, or a URL or kind in it is wrong.
    """
    path = settings_path(home)
    table = user_settings(home).get("notify", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [notify] must be a table with urls = [...] and on = [...]")
    urls = _string_list(table.get("urls", []), f"{path}: notify.urls")
    on = _string_list(table.get("on", list(DEFAULT_ON)), f"{path}: notify.on")
    unknown = [kind for kind in on if kind not in ALERT_KINDS]
    if unknown:
        raise ConfigError(f"{path}: notify.on has {unknown[0]!r}; expected some of {', '.join(ALERT_KINDS)}")
    return NotifySettings(check_urls(urls, source=str(path)), tuple(on))


def check_urls(urls: Sequence[str], source: str = "--notify") -> tuple[str, ...]:
    """The URLs, each checked by Apprise's own parser; ConfigError naming the first it cannot read."""
    if not urls:
        return ()
    import apprise

    for url in urls:
        if not apprise.Apprise().add(url):
            where = f"{source}: " if source else ""
            raise ConfigError(
                f"{where}Apprise cannot read the URL {url!r} "
                "(e.g. ntfy://TOPIC, json://HOST:PORT/PATH, mailto://USER:PASS@HOST; "
                "see https://github.com/caronc/apprise/wiki)"
            )
    return tuple(urls)


def _string_list(value: object, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{what} must be a list of strings; got {value!r}")
    return value


@dataclass
class Notifier:
    """Sends alerts in the background; each failure is reported once, never raised.

    Args:
        settings: where to and which kinds.
        on_failure: told (once per Notifier) that a send failed, e.g. to write a log line.
    """

    settings: NotifySettings
    on_failure: Callable[[str], None] = lambda message: None
    timeout: float = SEND_TIMEOUT_SECONDS
    _failed_once: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)

    def send(self, kind: str, title: str, body: str) -> threading.Thread | None:
        """Send one alert of ``kind`` unless the settings leave it out; returns the sending thread."""
        if not self.settings.wants(kind):
            return None
        thread = threading.Thread(target=self._send, args=(kind, title, body), name=f"notify-{kind}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def wait(self, timeout: float | None = None) -> None:
        """Give sends in flight up to ``timeout`` (default: the send timeout) before exiting."""
        for thread in self._threads:
            thread.join(self.timeout if timeout is None else timeout)

    def _send(self, kind: str, title: str, body: str) -> None:
        try:
            import apprise

            sender = apprise.Apprise()
            for url in self.settings.urls:
                sender.add(url)
            ok = sender.notify(
                title=title,
                body=body,
                notify_type=_notify_type(kind),
                timeout=self.timeout,
            )
            problem = None if ok else f"could not deliver the {kind} alert to {len(self.settings.urls)} URL(s)"
        except Exception as error:  # noqa: BLE001 - a plugin's bug must not end the sender
            problem = f"the {kind} alert failed: {type(error).__name__}: {error}"
        if problem and not self._failed_once:
            self._failed_once = True
            self.on_failure(problem)


def _notify_type(kind: str) -> str:
    if kind in ("finished", "queue_empty", "sweep_done"):
        return "success"
    if kind in ("failed", "crashed", "nan"):
        return "failure"
    return "warning"
