"""The runs that train on this machine now, as the preset screen names them.

A bare ``convdeck`` lists them (a run started with ``--detach``, or left
running at quit, is not forgotten), and starting a second run beside one on
the same device asks first: two runs share the GPU's memory (or the CPU)
and both slow down, or one runs out of memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.run.facts import RunFacts
from tui.widgets.header import status_word

if TYPE_CHECKING:
    from engine.config import RunConfig

ATTACH_KEY = "A"
"""The key that attaches to a live run from the preset screen (see tui.bindings)."""


def describe(facts: RunFacts, separator: str = "  ") -> str:
    """``run-001  lenet5-digits  running  epoch 3/10``; the id alone on a line with ``separator="\n"``."""
    epochs = f"/{facts.epochs}" if facts.epochs else ""
    preset = "" if facts.preset in ("", "?") or facts.preset in facts.run_id else f"{facts.preset}  "
    return f"{facts.run_id}{separator}{preset}{status_word(facts)}, epoch {facts.epoch}{epochs}"


def _devices(names: list[str]) -> set[str]:
    """Device names compared without their spelling: ``/device:GPU:0``, ``/gpu:0`` and ``GPU:0`` alike."""
    return {name.lower().removeprefix("/").removeprefix("device:").removeprefix("job:localhost/") for name in names}


def shares_devices(config: RunConfig, live: RunFacts) -> bool:
    """True when a run of ``config`` would train on a device that ``live`` trains on.

    ``train.devices`` empty means every GPU (or the CPU on a machine without
    one), which every other run shares; only two runs pinned to different
    devices are apart.
    """
    train = live.config.get("train") if isinstance(live.config.get("train"), dict) else {}
    theirs = _devices(list(train.get("devices") or []))
    ours = _devices(list(config.train.devices))
    return not theirs or not ours or bool(theirs & ours)


def launch_notice(live: list[RunFacts]) -> str:
    """What the chart says at launch when runs train here: each run, and how to watch one."""
    if not live:
        return "No run yet. Pick a preset and press Enter."
    count = f"{len(live)} runs train" if len(live) > 1 else "1 run trains"
    # Two lines a run: a run id with its date is already half of a narrow chart's width.
    lines = [f"{count} on this machine:", *(describe(facts, "\n") for facts in live[-4:])]
    if len(live) > 4:
        lines.append(f"… and {len(live) - 4} more (o lists every run)")
    lines.append(f"{ATTACH_KEY} attaches · Enter starts another run")
    return "\n".join(lines)


def header_notice(live: list[RunFacts]) -> str:
    """The header's line at launch: how many runs train, and the key that shows one."""
    if not live:
        return "pick a preset, Enter starts it"
    count = f"{len(live)} runs train" if len(live) > 1 else f"run {live[-1].run_id} trains"
    return f"{count} here: {ATTACH_KEY} attaches"
