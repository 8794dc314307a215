"""Runs side by side: the settings that differ between them, with their best figures.

A config is a nested dict (``{"train": {"batch_size": 64}}``); compared here as
flat dotted settings (``train.batch_size``). Only settings whose values are not
all equal are worth a column: twenty runs of one preset with three learning
rates compare as one column, not sixty.

Every figure comes from :class:`engine.run.facts.RunFacts` (the one fold);
nothing here reads events. TF-free and import-light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.run.facts import RunFacts

NOT_COMPARED = frozenset({"description"})
"""Top-level config keys that are prose about a preset, not a setting: never a column."""


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested config under its dotted name, in the config's own order.

    Lists are leaves (``model.blocks = [2, 2, 2, 2]`` is one setting).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key in NOT_COMPARED:
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted settings whose values are not all equal among ``configs``.

    A setting one config lacks counts as None there (an older run's config may
    miss a newer field). Ordered as the settings first appear, so ``model.*``
    comes before ``data.*`` and ``train.*``, as in a preset.
    """
    flats = [flatten_config(config) for config in configs]
    names = list(dict.fromkeys(name for flat in flats for name in flat))
    return [name for name in names if _differs([flat.get(name) for flat in flats])]


def _differs(values: list[Any]) -> bool:
    # Compared by type as well as value: 1 and 1.0 and true read differently in a preset.
    first = _identity(values[0])
    return any(_identity(value) != first for value in values[1:])


def _identity(value: Any) -> tuple:
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)  # NaN != NaN, yet two runs with NaN agree
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_identity(item) for item in value))
    return (type(value).__name__, value) if _hashable(value) else ("repr", repr(value))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@dataclass(frozen=True, order=True)
class SettingValue:
    """A setting's value as drawn (``text``) and ordered (``sort_key``), whatever its type.

    One column may hold several types (``train.jit_compile`` is ``"auto"`` or a
    bool): the key orders booleans, then numbers, then text, then lists.
    """

    sort_key: tuple
    text: str = field(compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def is_number(self) -> bool:
        """True for an int or a float (not a bool): such a column right-aligns."""
        return self.sort_key[0] == _NUMBER_RANK


def setting_value(value: Any) -> SettingValue | None:
    """``value`` ready for a table cell; None when the setting is unset (drawn as a dash)."""
    if value is None:
        return None
    return SettingValue(_sort_key(value), setting_text(value))


def setting_text(value: Any) -> str:
    """A value as a user would write it in ``--set``: ``true``, ``0.001``, ``[2,2,2,2]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(setting_text(item) for item in value) + "]"
    return str(value)


_BOOL_RANK, _NUMBER_RANK, _TEXT_RANK, _LIST_RANK, _OTHER_RANK = range(5)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (_BOOL_RANK, int(value))
    if isinstance(value, (int, float)):
        return (_NUMBER_RANK, value if not math.isnan(value) else math.inf)
    if isinstance(value, str):
        return (_TEXT_RANK, value)
    if isinstance(value, (list, tuple)):
        return (_LIST_RANK, tuple(_sort_key(item) for item in value))
    return (_OTHER_RANK, repr(value))


@dataclass(frozen=True)
class RunComparison:
    """The chosen runs, one record each, and the settings that differ among them.

    Attributes:
        settings: the differing dotted settings, one column each.
        records: per run, in the order given: its id, one :class:`SettingValue`
            (or None) per setting, then best validation accuracy, best epoch,
            final loss and status.
    """

    settings: list[str]
    records: list[tuple]


FIGURES = ("best_val_accuracy", "best_epoch", "final_loss", "status")
"""The figures after the settings in every record, by name."""


def compare_runs(runs: Iterable[RunFacts]) -> RunComparison:
    """The comparison of ``runs`` (any number; with one, no setting differs)."""
    runs = list(runs)
    settings = differing_settings([run.config for run in runs])
    records = []
    for run in runs:
        flat = flatten_config(run.config)
        values = tuple(setting_value(flat.get(name)) for name in settings)
        figures = (run.best_val_accuracy, run.best_epoch, final_loss(run), run.status)
        records.append((run.run_id, *values, *figures))
    return RunComparison(settings, records)


def final_loss(run: RunFacts) -> float | None:
    """The loss a run ended (or stands) at: the ``finished`` event's, else the last epoch's mean, else the last step's.

    An epoch's mean before a single batch's: one batch is noisy (see the protocol's
    note on epoch metrics), so a step's loss is the last resort of a run not one epoch old.
    """
    candidates = (
        run.final.loss if run.final is not None else None,
        run.last_epoch.loss if run.last_epoch is not None else None,
        run.last_loss,
    )
    return next((loss for loss in candidates if loss is not None and math.isfinite(loss)), None)
