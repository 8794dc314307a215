"""Out-of-memory remedies: the one catalogue that every part of convdeck reads.

Each remedy is declared once, in :data:`REMEDIES`: its name, the TUI key, a
title, its predicted effect, the config change it makes (a pure function
from one config to the next) and when it applies. The config's
``train.on_oom``, the control socket, ``convdeck ctl RUN remedy NAME``,
``convdeck resume --remedy``, the worker's unattended policy, the TUI's keys,
palette and help all read this table, so a new remedy is one entry here.

TF-free and free of any config import at module level (engine.config reads
this module to validate ``train.on_oom``): a config arrives as an argument.
The worker records a remedy's change as a config revision and restarts
itself so the GPU memory is truly released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.config import RunConfig

log = logging.getLogger("convdeck.remedies")

RESNET18_BLOCKS = [2, 2, 2, 2]
ASK, STOP = "ask", "stop"
"""The ``train.on_oom`` policies that are not a remedy: wait for one, or end the run."""


@dataclass(frozen=True)
class Remedy:
    """One remedy, declared once.

    Attributes:
        name: what ``train.on_oom``, ``ctl RUN remedy NAME``, ``resume --remedy``
            and the ``oom`` event call it.
        key: the TUI key that applies it.
        label: the footer's short label.
        title: one line saying what it does (help, palette, tooltips, ``oom`` event).
        change: the fields it sets in a config, ``{"section.field": new value}``.
        effect: the predicted effect on a config it applies to, one line.
        blocker: why it cannot apply to a config trained on ``replicas``
            replicas, or None when it can.
        fresh_model: it starts a fresh model, so old checkpoints cannot be restored.
        former_names: names it had before; old configs still read them, with a hint.
    """

    name: str
    key: str
    label: str
    title: str
    change: Callable[[RunConfig], dict[str, Any]]
    effect: Callable[[RunConfig], str]
    blocker: Callable[[RunConfig, int], str | None]
    fresh_model: bool = False
    former_names: tuple[str, ...] = ()


# ----- the changes and their effects -------------------------------------------------------------


def _halve_batch(config: RunConfig) -> dict[str, Any]:
    train = config.train
    change: dict[str, Any] = {"train.batch_size": train.batch_size // 2}
    if train.steps_per_epoch:
        # A capped epoch is that many examples: twice the steps at half the batch.
        change["train.steps_per_epoch"] = train.steps_per_epoch * 2
    return change


def _halve_batch_effect(config: RunConfig) -> str:
    train = config.train
    batch, accumulate = train.batch_size, train.accumulation_steps
    capped = (
        f"; steps per epoch {train.steps_per_epoch} -> {train.steps_per_epoch * 2}"
        if train.steps_per_epoch
        else ""
    )
    return f"batch {batch} -> {batch // 2}; effective batch {batch * accumulate} -> {batch // 2 * accumulate}{capped}"


def _halve_accumulate(config: RunConfig) -> dict[str, Any]:
    # The examples per update stay, so a capped epoch keeps its step count.
    train = config.train
    return {"train.batch_size": train.batch_size // 2, "train.accumulation_steps": train.accumulation_steps * 2}


def _halve_accumulate_effect(config: RunConfig) -> str:
    batch, accumulate = config.train.batch_size, config.train.accumulation_steps
    return (
        f"batch {batch} -> {batch // 2} with {accumulate * 2} accumulation steps: the effective "
        f"batch stays {batch // 2 * accumulate * 2}; BatchNorm statistics now see {batch // 2}"
    )


def _halving_blocker(config: RunConfig, replicas: int) -> str | None:
    half = config.train.batch_size // 2
    if half < 1:
        return "the batch size is already 1; try mixed-precision or a smaller model"
    if half % replicas:
        # The batch is the global one: each replica must get the same share of it.
        return f"half the batch ({half}) does not split evenly over {replicas} replicas"
    return None


def _mixed_precision_blocker(config: RunConfig, replicas: int) -> str | None:
    return "mixed precision is already on" if config.train.mixed_precision else None


def is_resnet18(config: RunConfig) -> bool:
    """True when the config's model is already ResNet [2,2,2,2] with basic blocks."""
    model = config.model
    return model.arch == "resnet" and model.blocks == RESNET18_BLOCKS and model.block_type == "basic"


def _resnet18_blocker(config: RunConfig, replicas: int) -> str | None:
    return "the model is already ResNet [2,2,2,2]" if is_resnet18(config) else None


def _resnet18_change(config: RunConfig) -> dict:
    change = {"model.arch": "resnet", "model.blocks": list(RESNET18_BLOCKS), "model.block_type": "basic"}
    # convdeck's ResNet has no pretrained base: the transfer settings go with the old model.
    transfer = {"model.weights": None, "model.freeze_base": False, "train.fine_tune_at_epoch": None}
    section = {"model": config.model, "train": config.train}
    for dotted, off in transfer.items():
        part, _, field = dotted.partition(".")
        if getattr(section[part], field) != off:
            change[dotted] = off
    return change


def _resnet18_effect(config: RunConfig) -> str:
    return f"model {config.model.arch} -> ResNet [2,2,2,2] on the same data: fresh weights and optimizer"


# ----- the catalogue -----------------------------------------------------------------------------

REMEDIES: dict[str, Remedy] = {
    remedy.name: remedy
    for remedy in (
        Remedy(
            "halve-batch",
            key="h",
            label="Halve batch",
            title="halve the batch size",
            change=_halve_batch,
            effect=_halve_batch_effect,
            blocker=_halving_blocker,
            former_names=("halve",),
        ),
        Remedy(
            "halve-accumulate",
            key="a",
            label="Halve+accum",
            title="halve the batch, accumulate twice the steps (same effective batch)",
            change=_halve_accumulate,
            effect=_halve_accumulate_effect,
            blocker=_halving_blocker,
        ),
        Remedy(
            "mixed-precision",
            key="m",
            label="Mixed prec.",
            title="compute in 16-bit floats (about half the activation memory)",
            change=lambda config: {"train.mixed_precision": True},
            effect=lambda config: "16-bit activations and gradients: about half the activation memory",
            blocker=_mixed_precision_blocker,
        ),
        Remedy(
            "resnet18",
            key="r",
            label="ResNet-18",
            title="switch the model to ResNet [2,2,2,2]",
            change=_resnet18_change,
            effect=_resnet18_effect,
            blocker=_resnet18_blocker,
            fresh_model=True,
        ),
    )
}
"""Every remedy by name, in the order the TUI and the ``oom`` event offer them."""

UNATTENDED_REMEDY = REMEDIES["halve-batch"].name
"""What an unattended run (a queue entry, a sweep trial) applies where train.on_oom says ``ask``:
nobody is there to answer, and halving the batch keeps the model and the data as asked."""


# ----- names ------------------------------------------------------------------------------------


def oom_policies() -> tuple[str, ...]:
    """What ``train.on_oom`` takes: ``ask``, every remedy by name, ``stop``."""
    return (ASK, *REMEDIES, STOP)


def renamed(name: str) -> str | None:
    """The current name of a remedy that ``name`` once was, or None."""
    return next((remedy.name for remedy in REMEDIES.values() if name in remedy.former_names), None)


def unknown_remedy(name: object) -> str:
    """One line saying ``name`` is no remedy, and what would be."""
    new_name = renamed(name) if isinstance(name, str) else None
    if name is None:
        got = "missing"
    elif new_name:
        got = f"got {name!r}, which is now called {new_name!r}"
    else:
        got = f"got {name!r}"
    return f"remedy NAME {got}; expected one of {', '.join(REMEDIES)}"


def check_remedy(name: object) -> str:
    """``name`` when it names a remedy.

    Raises:
        ConfigError: it does not, with the names that would do.
    """
    if not isinstance(name, str) or name not in REMEDIES:
        raise ConfigError(unknown_remedy(name))
    return name


_hinted: set[str] = set()


def read_policy(value: Any) -> Any:
    """``train.on_oom`` as written, with a former remedy name read as the current one.

    A config or preset from before a rename still loads; the hint is logged
    once a process, not raised: nothing the user wrote is wrong enough to stop.
    """
    new_name = renamed(value) if isinstance(value, str) else None
    if new_name is None:
        return value
    if value not in _hinted:
        _hinted.add(value)
        log.warning(
            "train.on_oom: %r is now called %r; read as that (write %r to drop this hint)", value, new_name, new_name
        )
    return new_name


# ----- applying ---------------------------------------------------------------------------------


def blocker(name: str, config: RunConfig, replicas: int = 1) -> str | None:
    """Why remedy ``name`` cannot apply to ``config`` on ``replicas`` replicas, or None."""
    return REMEDIES[check_remedy(name)].blocker(config, replicas)


def predicted_effect(name: str, config: RunConfig, replicas: int = 1) -> str | None:
    """What the remedy would do to this config, or None when it does not apply."""
    if blocker(name, config, replicas) is not None:
        return None
    return REMEDIES[name].effect(config)


def applicable_remedies(config: RunConfig, replicas: int = 1) -> list[dict]:
    """The remedies that apply to ``config`` on ``replicas`` replicas, as the ``oom`` event carries them."""
    return [
        {"name": remedy.name, "key": remedy.key, "title": remedy.title, "effect": remedy.effect(config)}
        for remedy in REMEDIES.values()
        if remedy.blocker(config, replicas) is None
    ]


def apply_remedy(name: str, config: RunConfig, replicas: int = 1) -> tuple[RunConfig, dict]:
    """The config after the remedy, and the changes as ``{field: [old, new]}``.

    Raises:
        ConfigError: unknown remedy, or one that cannot apply (batch size 1 cannot halve).
    """
    why_not = blocker(name, config, replicas)
    if why_not is not None:
        raise ConfigError(f"remedy {name!r} does not apply: {why_not}")
    data = config.model_dump()
    changes: dict[str, list] = {}
    for dotted, value in REMEDIES[name].change(config).items():
        section, _, field = dotted.partition(".")
        changes[dotted] = [data[section][field], value]
        data[section][field] = value
    return type(config).model_validate(data), changes


def changes_weights(name: str) -> bool:
    """True when the remedy starts a fresh model, so old checkpoints cannot be restored."""
    return REMEDIES[check_remedy(name)].fresh_model
