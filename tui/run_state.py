"""What the app knows about the run it watches, folded from its events.

No Textual here: the state is plain data the widgets read, so it is tested
without a terminal, and a malformed event only bumps ``bad_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.remedies import REMEDIES
from engine.run.history import RunHistory

LIVE_STATUSES = ("starting", "running", "paused", "waiting", "restarting")
"""Statuses in which the run's worker is (believed) alive. ``restarting``: a remedy
was accepted; the worker checkpoints and replaces itself, then says ``run_started``."""
RESTART_LOG_PREFIX = "applying remedy "
"""How a worker's ``log`` event announced its restart before it carried ``restarting``."""

@dataclass
class RunState:
    """The watched run: identity, status, progress, history and pending OOM.

    Attributes:
        status: starting, running, paused, waiting (for a remedy), restarting
            (with a remedy), finished, stopped, failed or crashed.
        reason: why it ended or what is wrong, one line, else None.
        pending_oom: the ``oom`` event awaiting a remedy, else None.
    """

    run_id: str
    preset: str = ""
    status: str = "starting"
    reason: str | None = None
    pid: int | None = None
    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    steps_per_epoch: int | None = None
    epoch_end_step: int = 0
    epochs_ended: set = field(default_factory=set)
    restarts: int = 0
    images_per_sec: float | None = None
    step_time: float | None = None
    last_loss: float | None = None
    # tf.distribute, from run_started: e.g. "mirrored", 2 replicas, 1 worker.
    strategy: str | None = None
    replicas: int | None = None
    workers: int | None = None
    config: dict = field(default_factory=dict)
    pending_oom: dict | None = None
    history: RunHistory = field(default_factory=RunHistory)
    bad_events: int = 0

    @property
    def live(self) -> bool:
        """True while the worker is running, paused or waiting for a remedy."""
        return self.status in LIVE_STATUSES

    def apply(self, events: list[dict]) -> tuple[list[dict], int]:
        """Fold a batch of events in; returns the notable ones and the step count."""
        self.history.ingest(events)
        notable, steps = [], 0
        for event in events:
            if not isinstance(event, dict):
                self.bad_events += 1
                continue
            try:
                if event.get("type") == "step":
                    steps += 1
                    self._step(event)
                else:
                    self._notable(event)
                    notable.append(event)
            except (TypeError, ValueError, KeyError, AttributeError):
                self.bad_events += 1
        return notable, steps

    def _step(self, event: dict) -> None:
        self.step = _last(event.get("step"), self.step)
        self.epoch = _last(event.get("epoch"), self.epoch)
        self.last_loss = _last(event.get("loss"), self.last_loss)
        self.images_per_sec = _last(event.get("images_per_sec"), self.images_per_sec)
        self.step_time = _last(event.get("step_time"), self.step_time)
        if self.status in ("starting", "waiting", "restarting"):
            self.status, self.pending_oom, self.reason = "running", None, None

    def _notable(self, event: dict) -> None:
        handler = getattr(self, f"_on_{event.get('type')}", None)
        if handler is not None:
            handler(event)

    def restarting(self, remedy: str) -> None:
        """A remedy was accepted: the worker checkpoints and restarts with it."""
        self.status, self.pending_oom = "restarting", None
        self.reason = f"restarting with {remedy} from the last checkpoint"

    def _on_log(self, event: dict) -> None:
        if not self.live:
            return
        remedy = event.get("restarting")
        message = str(event.get("message", ""))
        if isinstance(remedy, str) and remedy:
            self.restarting(remedy)
        elif message.startswith(RESTART_LOG_PREFIX):  # a run recorded by an older worker
            self.restarting(message[len(RESTART_LOG_PREFIX) :].split(":")[0])

    def _on_run_started(self, event: dict) -> None:
        if event.get("resumed_from_step") is not None or self.step:
            self.restarts += 1
        self.status, self.reason = "running", None
        self.run_id = str(event.get("run_id") or self.run_id)
        self.pid = event.get("pid") if isinstance(event.get("pid"), int) else self.pid
        self.steps_per_epoch = event.get("steps_per_epoch") or self.steps_per_epoch
        self.epochs = event.get("epochs") or self.epochs
        self.strategy = str(event.get("strategy") or self.strategy or "") or None
        for name in ("replicas", "workers"):
            if isinstance(event.get(name), int):
                setattr(self, name, event[name])
        config = event.get("config")
        if isinstance(config, dict):
            self.config = config
            self.preset = str(config.get("name") or self.preset)
            self.epochs = self.epochs or config.get("train", {}).get("epochs")

    def _on_epoch_end(self, event: dict) -> None:
        self.epoch = int(event.get("epoch", self.epoch))
        self.epochs_ended.add(event.get("epoch"))
        self.epoch_end_step = int(event.get("step") or self.step)

    def _on_paused(self, event: dict) -> None:
        self.status = "paused"

    def _on_resumed(self, event: dict) -> None:
        self.status = "running"

    def _on_nan(self, event: dict) -> None:
        self.reason = f"loss became NaN at step {event.get('step', '?')}"

    def _on_oom(self, event: dict) -> None:
        self.status = "waiting"
        self.pending_oom = event
        self.reason = f"out of memory at step {event.get('step', '?')}"

    def _on_remedy_applied(self, event: dict) -> None:
        # The new worker applied it; it says run_started once TensorFlow has loaded.
        self.status, self.pending_oom = "restarting", None
        self.reason = f"restarting with {event.get('name', 'a remedy')}"
        changes = event.get("changes")
        if isinstance(changes, dict):
            for dotted, change in changes.items():
                _set_dotted(self.config, str(dotted), change)
            spe = changes.get("steps_per_epoch")
            if isinstance(spe, list) and len(spe) == 2:
                self.steps_per_epoch = spe[1]

    def _on_finished(self, event: dict) -> None:
        stopped = event.get("reason") == "stopped"
        self.status = "stopped" if stopped else "finished"
        self.pending_oom = None
        self.reason = "stopped by request" if stopped else None

    def _on_worker_exit(self, event: dict) -> None:
        # The supervisor saw the worker die (a signal, the OOM killer) without its last event.
        if not event.get("final_event") and self.live:
            self.status, self.pending_oom = "crashed", None
            self.reason = str(event.get("message") or "the worker died without a last event")

    def _on_failed(self, event: dict) -> None:
        self.status, self.pending_oom = "failed", None
        self.reason = str(event.get("error") or "the run failed")

    def remedies(self) -> list[dict]:
        """The remedies the pending OOM offers, each with the key the app binds ("" if none).

        The key is the catalogue's, not the event's: an old run's event may name another.
        """
        if not self.pending_oom:
            return []
        offered = self.pending_oom.get("remedies") or []
        remedies = []
        for remedy in offered:
            if isinstance(remedy, dict) and remedy.get("name"):
                known = REMEDIES.get(remedy["name"])
                remedies.append({**remedy, "key": known.key if known else ""})
        return remedies

    def eta_seconds(self) -> float | None:
        """Seconds left at the last step time, when the total is known.

        Counted in epochs left, not from the step number: a remedy that halves
        the batch doubles the steps of every epoch still to come.
        """
        if not (self.steps_per_epoch and self.epochs and self.step_time):
            return None
        into_epoch = max(0, self.step - self.epoch_end_step)
        remaining = (self.epochs - len(self.epochs_ended)) * self.steps_per_epoch - into_epoch
        return max(0.0, remaining * self.step_time)


def _last(value: object, default: object) -> object:
    """The value of a step event; batched events carry lists: take the last."""
    if isinstance(value, list):
        return value[-1] if value else default
    return default if value is None else value


def _set_dotted(config: dict, dotted: str, change: object) -> None:
    """Record a remedy's change (``train.batch_size: [256, 128]``) in the config dict."""
    if not (isinstance(change, list) and len(change) == 2):
        return
    parts = dotted.split(".")
    if len(parts) == 1:
        # A bare field name: find the section that has it.
        section = next((s for s in config.values() if isinstance(s, dict) and dotted in s), None)
        if section is not None:
            section[dotted] = change[1]
        return
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[parts[-1]] = change[1]
