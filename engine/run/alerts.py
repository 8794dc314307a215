"""Alerts about one run, sent by the process that outlives what it reports: the supervisor.

The supervisor stays beside its worker for the worker's whole life (remedy
re-execs included) and sees it die, so it is the one place that can say
``crashed``, ``hung`` or ``stalled`` as well as ``finished``. It folds the
run's new events into :class:`engine.run.facts.RunFacts` each second, with
the liveness it sees, and sends an alert when the run's status turns into
one a person wants to hear about (each time it turns, not each second).
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.run.events import EVENTS_FILE, EventTail
from engine.run.facts import RunFacts
from engine.run.notify import Notifier, NotifySettings, load_settings
from engine.run.store import CONFIG_FILE, Liveness

STATUS_ALERTS = {
    "finished": "finished",
    "failed": "failed",
    "crashed": "crashed",
    "hung": "hung",
    "stalled": "stalled",
    "waiting": "oom_waiting",
}
"""Which alert a status sends when the run turns into it (``stopped`` and ``pruned`` were asked for)."""


class RunAlerts:
    """Watches one run's events and liveness; sends an alert on each status worth one.

    Args:
        run_dir: the run directory.
        notifier: where alerts go (its settings say which kinds).
    """

    def __init__(self, run_dir: Path, notifier: Notifier) -> None:
        self.run_dir = run_dir
        self.notifier = notifier
        self.facts = RunFacts(run_id=run_dir.name, run_dir=run_dir)
        self._tail = EventTail(run_dir / EVENTS_FILE)
        self._status: str | None = None
        self._nan_step: int | None = None
        self.sent: list[str] = []

    @classmethod
    def for_run(cls, run_dir: Path, on_failure=lambda message: None) -> RunAlerts | None:
        """The run's alerts per ``convdeck.toml`` and its own ``--notify`` URLs; None when none are set."""
        home = run_dir.parent.parent
        settings = load_settings(home)
        own = _run_urls(run_dir)
        if own:
            settings = settings.with_urls(own) if settings.urls else NotifySettings(tuple(own), settings.on)
        if not settings.urls:
            return None
        return cls(run_dir, Notifier(settings, on_failure=on_failure))

    def poll(self, liveness: Liveness, now: float | None = None) -> list[str]:
        """Fold what the run wrote since the last poll, judge it now; the kinds of alert sent."""
        self.facts.apply(self._tail.read_new())
        self.facts.liveness, self.facts.observed_at = liveness, time.time() if now is None else now
        sent = []
        status = self.facts.status
        if status != self._status and status in STATUS_ALERTS:
            sent.append(self._send(STATUS_ALERTS[status]))
        self._status = status
        if self.facts.nan_step is not None and self.facts.nan_step != self._nan_step:
            self._nan_step = self.facts.nan_step
            sent.append(self._send("nan"))
        return [kind for kind in sent if kind]

    def wait(self, timeout: float | None = None) -> None:
        """Give alerts in flight their time before the supervisor exits."""
        self.notifier.wait(timeout)

    def _send(self, kind: str) -> str:
        if self.notifier.send(kind, alert_title(self.facts), alert_body(self.facts)) is None:
            return ""
        self.sent.append(kind)
        return kind


def alert_title(facts: RunFacts) -> str:
    return f"convdeck: {facts.run_id} {facts.status}"


def alert_body(facts: RunFacts) -> str:
    """What a person needs to decide from a phone: where the run is, its numbers, why, and how to look."""
    lines = [f"run {facts.run_id} ({facts.preset}, model {facts.model})"]
    status = facts.status
    lines.append(f"status {status}" + (f": {facts.reason}" if facts.reason else ""))
    epochs = f"/{facts.epochs}" if facts.epochs else ""
    total = f"/{facts.total_steps}" if facts.total_steps else ""
    lines.append(f"epoch {facts.epoch}{epochs}  step {facts.step}{total}")
    figures = []
    if facts.val_accuracy is not None:
        figures.append(f"val_accuracy {facts.val_accuracy:.4f}")
    if facts.best_val_accuracy is not None:
        figures.append(f"best {facts.best_val_accuracy:.4f} (epoch {facts.best_epoch})")
    if facts.val_loss is not None:
        figures.append(f"val_loss {facts.val_loss:.4f}")
    if facts.last_loss is not None:
        figures.append(f"loss {facts.last_loss:.4f}")
    if figures:
        lines.append("  ".join(figures))
    if facts.remedies:
        lines.append(f"remedies applied: {', '.join(facts.remedies)}")
    if facts.failure is not None and facts.failure.error:
        lines.append(f"error: {facts.failure.error.strip().splitlines()[-1]}")
    lines.append(f"look: convdeck attach {facts.run_id}")
    return "\n".join(lines)


def _run_urls(run_dir: Path) -> list[str]:
    """The run's own alert URLs (``convdeck run --notify URL``), from its config."""
    from engine.config import load_toml

    try:
        notify = load_toml(run_dir / CONFIG_FILE).get("notify", {})
    except Exception:  # noqa: BLE001 - an unreadable config is the worker's to report, not ours
        return []
    urls = notify.get("urls", []) if isinstance(notify, dict) else []
    return [url for url in urls if isinstance(url, str)]
