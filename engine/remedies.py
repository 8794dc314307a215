"""Out-of-memory remedies: what each one changes in the config, and its predicted effect.

TF-free: the UI shows the remedies and their effects from the ``oom`` event,
and the worker applies one to the config before it resumes. Each remedy is a
pure function from one config to the next; the worker records the change as
a config revision and restarts itself so the GPU memory is truly released.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import ConfigError, RunConfig

RESNET18_BLOCKS = [2, 2, 2, 2]


@dataclass(frozen=True)
class Remedy:
    """One remedy: its name, the key the TUI binds, and a one-line summary."""

    name: str
    key: str
    title: str


REMEDIES = {
    r.name: r
    for r in (
        Remedy("halve-batch", "h", "halve the batch size"),
        Remedy("halve-accumulate", "a", "halve the batch, double gradient accumulation"),
        Remedy("mixed-precision", "m", "compute in 16-bit floats"),
        Remedy("resnet18", "r", "switch the model to ResNet [2,2,2,2]"),
    )
}
# train.on_oom policy -> the remedy it applies unattended.
POLICY_REMEDY = {"halve": "halve-batch", "halve-accumulate": "halve-accumulate", "resnet18": "resnet18"}


def is_resnet18(config: RunConfig) -> bool:
    model = config.model
    return model.arch == "resnet" and model.blocks == RESNET18_BLOCKS and model.block_type == "basic"


def predicted_effect(name: str, config: RunConfig) -> str | None:
    """What the remedy would do to this config, or None when it does not apply."""
    train = config.train
    batch, accumulate = train.batch_size, train.accumulation_steps
    if name == "halve-batch" and batch > 1:
        capped = (
            f"; steps per epoch {train.steps_per_epoch} -> {train.steps_per_epoch * 2}"
            if train.steps_per_epoch
            else ""
        )
        return (
            f"batch {batch} -> {batch // 2}; effective batch {batch * accumulate} -> "
            f"{batch // 2 * accumulate}{capped}"
        )
    if name == "halve-accumulate" and batch > 1:
        return (
            f"batch {batch} -> {batch // 2} with {accumulate * 2} accumulation steps: the effective "
            f"batch stays {batch // 2 * accumulate * 2}; BatchNorm statistics now see {batch // 2}"
        )
    if name == "mixed-precision" and not train.mixed_precision:
        return "16-bit activations and gradients: about half the activation memory"
    if name == "resnet18" and not is_resnet18(config):
        return f"model {config.model.arch} -> ResNet [2,2,2,2] on the same data: fresh weights and optimizer"
    return None


def applicable_remedies(config: RunConfig) -> list[dict]:
    """The remedies that apply, each as the ``oom`` event carries it."""
    found = []
    for remedy in REMEDIES.values():
        effect = predicted_effect(remedy.name, config)
        if effect:
            found.append({"name": remedy.name, "key": remedy.key, "title": remedy.title, "effect": effect})
    return found


def apply_remedy(name: str, config: RunConfig) -> tuple[RunConfig, dict]:
    """The config after the remedy, and the changes as ``{field: [old, new]}``.

    Raises:
        ConfigError: unknown remedy, or one that cannot apply (batch size 1 cannot halve).
    """
    if name not in REMEDIES:
        raise ConfigError(f"unknown remedy {name!r}; expected one of {', '.join(REMEDIES)}")
    if predicted_effect(name, config) is None:
        raise ConfigError(f"remedy {name!r} does not apply: {_why_not(name, config)}")
    data = config.model_dump()
    changes: dict[str, list] = {}

    def change(section: str, field: str, value) -> None:
        changes[f"{section}.{field}"] = [data[section][field], value]
        data[section][field] = value

    train = config.train
    if name in ("halve-batch", "halve-accumulate"):
        change("train", "batch_size", train.batch_size // 2)
    if name == "halve-batch" and train.steps_per_epoch:
        # A capped epoch is that many examples: twice the steps at half the batch.
        # (halve-accumulate keeps the examples per update, so its cap stands.)
        change("train", "steps_per_epoch", train.steps_per_epoch * 2)
    if name == "halve-accumulate":
        change("train", "accumulation_steps", train.accumulation_steps * 2)
    if name == "mixed-precision":
        change("train", "mixed_precision", True)
    if name == "resnet18":
        change("model", "arch", "resnet")
        change("model", "blocks", list(RESNET18_BLOCKS))
        change("model", "block_type", "basic")
    return RunConfig.model_validate(data), changes


def changes_weights(name: str) -> bool:
    """True when the remedy starts a fresh model, so old checkpoints cannot be restored."""
    return name == "resnet18"


def _why_not(name: str, config: RunConfig) -> str:
    if name in ("halve-batch", "halve-accumulate"):
        return "the batch size is already 1; try mixed-precision or a smaller model"
    if name == "mixed-precision":
        return "mixed precision is already on"
    return "the model is already ResNet [2,2,2,2]"
