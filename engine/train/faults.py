"""Fault injection for tests on a CPU: ``CONVDECK_FAULTS``.

A comma-separated list read by the worker only:
``oom:batch_size>N`` (every step whose per-replica batch exceeds N fails, as
a memory limit would), ``oom:step=N`` (step N fails once), ``nan:step=N``
(the loss of step N is NaN). TF-free parsing; the trainer raises
TensorFlow's own ``ResourceExhaustedError`` where a fault says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ConfigError

_RULE = re.compile(r"^(oom|nan):(batch_size>|step=)(\d+)$")


@dataclass
class Faults:
    """The parsed rules; ``fired`` remembers one-shot faults already raised, by kind and step."""

    oom_batch_above: int | None = None
    oom_steps: set[int] = field(default_factory=set)
    nan_steps: set[int] = field(default_factory=set)
    fired: set[tuple[str, int]] = field(default_factory=set)
    # One-shot faults must stay fired across the worker's restart after a remedy.
    fired_path: Path | None = None

    def mark_fired(self, kind: str, step: int) -> None:
        """Record that the ``kind`` (oom or nan) fault of ``step`` has been raised."""
        self.fired.add((kind, step))
        if self.fired_path is not None:
            with open(self.fired_path, "a") as handle:
                handle.write(f"{kind} {step}\n")

    def oom_at(self, step: int, per_replica_batch: int) -> bool:
        """True if step ``step`` (1-based) should run out of memory."""
        if self.oom_batch_above is not None and per_replica_batch > self.oom_batch_above:
            return True
        return step in self.oom_steps and ("oom", step) not in self.fired

    def pending_nan_steps(self) -> set[int]:
        """The ``nan:step=N`` steps not yet raised."""
        return {step for step in self.nan_steps if ("nan", step) not in self.fired}

    def next_fault_step(self, after: int) -> int | None:
        """The first one-shot fault step greater than ``after``, so calls can end before it."""
        ooms = {step for step in self.oom_steps if ("oom", step) not in self.fired}
        pending = [step for step in ooms | self.pending_nan_steps() if step > after]
        return min(pending, default=None)

    @property
    def active(self) -> bool:
        return bool(self.oom_batch_above is not None or self.oom_steps or self.nan_steps)


def _read_fired(path: Path) -> set[tuple[str, int]]:
    fired = set()
    for line in path.read_text().splitlines():
        kind, _, step = line.strip().rpartition(" ")
        if step.isdigit():
            fired.add((kind or "oom", int(step)))
    return fired


def parse_faults(text: str | None = None, fired_path: Path | None = None) -> Faults:
    """Parse ``CONVDECK_FAULTS`` (or ``text``); ConfigError for a rule it does not know.

    Args:
        text: the rules; the environment variable when None.
        fired_path: a file that records one-shot faults already raised.
    """
    if text is None:
        text = os.environ.get("CONVDECK_FAULTS", "")
    faults = Faults(fired_path=fired_path)
    if fired_path is not None and fired_path.exists():
        faults.fired = _read_fired(fired_path)
    for rule in filter(None, (r.strip() for r in text.split(","))):
        match = _RULE.match(rule)
        if not match or (match[1] == "nan" and match[2] != "step="):
            raise ConfigError(
                f"CONVDECK_FAULTS: cannot read {rule!r}; expected oom:batch_size>N, oom:step=N or nan:step=N"
            )
        kind, test, number = match[1], match[2], int(match[3])
        if test == "batch_size>":
            faults.oom_batch_above = number
        elif kind == "oom":
            faults.oom_steps.add(number)
        else:
            faults.nan_steps.add(number)
    return faults
