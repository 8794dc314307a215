"""Fault injection for tests on a CPU: ``CONVDECK_FAULTS``.

A comma-separated list read by the worker only:
``oom:batch_size>N`` (every step whose per-replica batch exceeds N fails, as
a memory limit would), ``oom:step=N`` (step N fails once), ``nan:step=N``
(the loss of step N is NaN), ``stall:step=N`` (the input pipeline sleeps
before it delivers step N's batch, once: the worker lives on, no step
happens) with ``stall:seconds=S`` (how long; default 3600). TF-free
parsing; the trainer raises TensorFlow's own ``ResourceExhaustedError``
and adds the sleeping map to the input pipeline where a fault says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ConfigError

_RULE = re.compile(r"^(oom|nan|stall):(batch_size>|step=|seconds=)(\d+(?:\.\d+)?)$")
# The tests each kind takes; a step or a batch size is a whole number.
_TESTS = {"oom": ("batch_size>", "step="), "nan": ("step=",), "stall": ("step=", "seconds=")}
_EXPECTED = "oom:batch_size>N, oom:step=N, nan:step=N, stall:step=N or stall:seconds=S"
DEFAULT_STALL_SECONDS = 3600.0


@dataclass
class Faults:
    """The parsed rules; ``fired`` remembers one-shot faults already raised, by kind and step."""

    oom_batch_above: int | None = None
    oom_steps: set[int] = field(default_factory=set)
    nan_steps: set[int] = field(default_factory=set)
    stall_steps: set[int] = field(default_factory=set)
    stall_seconds: float = DEFAULT_STALL_SECONDS
    fired: set[tuple[str, int]] = field(default_factory=set)
    # One-shot faults must stay fired across the worker's restart after a remedy.
    fired_path: Path | None = None

    def mark_fired(self, kind: str, step: int) -> None:
        """Record that the ``kind`` (oom, nan or stall) fault of ``step`` has been raised."""
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

    def take_stall(self, step: int) -> float:
        """Seconds to hold step ``step``'s batch back: the stall's, once, else 0."""
        if step not in self.stall_steps or ("stall", step) in self.fired:
            return 0.0
        self.mark_fired("stall", step)
        return self.stall_seconds

    def next_fault_step(self, after: int) -> int | None:
        """The first one-shot fault step greater than ``after``, so calls can end before it.

        A stalled step counts too: the steps before it are reported before it stalls.
        """
        ooms = {step for step in self.oom_steps if ("oom", step) not in self.fired}
        stalls = {step for step in self.stall_steps if ("stall", step) not in self.fired}
        pending = [step for step in ooms | stalls | self.pending_nan_steps() if step > after]
        return min(pending, default=None)

    @property
    def active(self) -> bool:
        return bool(
            self.oom_batch_above is not None or self.oom_steps or self.nan_steps or self.stall_steps
        )


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
        if not match or match[2] not in _TESTS[match[1]] or ("." in match[3] and match[2] != "seconds="):
            raise ConfigError(f"CONVDECK_FAULTS: cannot read {rule!r}; expected {_EXPECTED}")
        kind, test, number = match[1], match[2], match[3]
        if test == "batch_size>":
            faults.oom_batch_above = int(number)
        elif test == "seconds=":
            faults.stall_seconds = float(number)
        else:
            {"oom": faults.oom_steps, "nan": faults.nan_steps, "stall": faults.stall_steps}[kind].add(int(number))
    return faults
