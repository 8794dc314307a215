"""Sweeps on Optuna: a study whose trials are ordinary convdeck runs.

Optuna keeps the study (SQLite under ``CONVDECK_HOME`` by default, or any
storage URL Optuna takes: ``postgresql://`` lets runners on several GPU
boxes work one study). convdeck adds only what a study of *runs* needs:

- a trial becomes a queue entry with the trial's values as ``--set``
  overrides (``next_trial``), so it is a run like any other: its own run
  directory, attachable, steerable;
- each validation is reported as an intermediate value, and the pruner's
  answer comes back (``report``);
- a run's end is told to the study (``finish``): finished -> COMPLETE with
  the best value of the metric, pruned -> PRUNED, failed or crashed -> FAIL,
  and the search goes on.

Trial numbers come from the storage, which hands each out once, so two
runners never run the same trial; a trial numbered past ``--trials`` (two
runners asked at once for the last one) is told FAIL at once and never run.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.run.store import convdeck_home
from engine.run.sweep_space import Param, assignment, grid_size

SWEEP_STORAGE_FILE = "sweeps.sqlite"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")
# Metrics a run reports at each validation, and which way is better.
METRIC_DIRECTIONS = {"val_accuracy": "maximize", "val_loss": "minimize"}
STORAGE_CONNECT_SECONDS = 5
_SPEC_ATTR = "convdeck"
_OVER_BUDGET_ATTR = "convdeck_over_budget"


@dataclass
class SweepSpec:
    """What a sweep searches and how: kept in the study, so any runner can work it."""

    preset: str
    overrides: list[str] = field(default_factory=list)
    params: list[dict] = field(default_factory=list)
    trials: int = 20
    sampler: str = "tpe"
    prune: str = "none"
    metric: str = "val_accuracy"

    @property
    def direction(self) -> str:
        return METRIC_DIRECTIONS[self.metric]

    def param_objects(self) -> list[Param]:
        return [Param(p["key"], p["kind"], tuple(p.get("values", ())), p.get("low", 0.0), p.get("high", 0.0))
                for p in self.params]


def default_storage(home: Path | None = None) -> str:
    return f"sqlite:///{(home or convdeck_home()) / SWEEP_STORAGE_FILE}"


def open_storage(url: str) -> Any:
    """Optuna's storage for ``url``; ConfigError in one line when it cannot be reached (within seconds)."""
    import optuna

    connect_args = {"connect_timeout": STORAGE_CONNECT_SECONDS} if url.startswith("postgresql") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args})
    except Exception as error:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot open the sweep storage {_redact(url)}: {reason}") from None


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


class Sweep:
    """One study and its spec.

    Args:
        name: the study's name.
        storage: an Optuna storage URL (default: SQLite under ``CONVDECK_HOME``).
    """

    def __init__(self, name: str, storage: str | None = None, home: Path | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name = name
        self.storage_url = storage or default_storage(home)
        self._storage = open_storage(self.storage_url)
        try:
            self.study = optuna.load_study(study_name=name, storage=self._storage)
        except KeyError:
            raise ConfigError(f"no sweep named {name!r} in {_redact(self.storage_url)}") from None
        raw = self.study.user_attrs.get(_SPEC_ATTR)
        if not isinstance(raw, dict):
            raise ConfigError(f"study {name!r} was not made by convdeck sweep (no {_SPEC_ATTR} attribute)")
        self.spec = SweepSpec(**raw)
        self.study.sampler = _sampler(self.spec)
        self.study.pruner = _pruner(self.spec)

    @classmethod
    def create(cls, name: str, spec: SweepSpec, storage: str | None = None, home: Path | None = None) -> Sweep:
        """Make the study, or join it when one of that name exists with the same spec."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _check_spec(spec)
        url = storage or default_storage(home)
        study = optuna.create_study(
            study_name=name,
            storage=open_storage(url),
            direction=spec.direction,
            load_if_exists=True,
        )
        existing = study.user_attrs.get(_SPEC_ATTR)
        wanted = json.loads(json.dumps(asdict(spec)))  # as the storage keeps it: tuples become lists
        if existing is None:
            study.set_user_attr(_SPEC_ATTR, wanted)
            if spec.sampler == "grid":
                _enqueue_grid(study, spec)
        elif existing != wanted:
            raise ConfigError(
                f"a sweep named {name!r} already exists with other settings; "
                f"choose another --name, or join it with the same options"
            )
        return cls(name, url, home)

    # -- trials ------------------------------------------------------------------------

    def next_trial(self) -> tuple[int, list[str]] | None:
        """Ask the study for a trial: its number and the run's ``--set`` overrides.

        None when the sweep has all its trials (finished or running), or a grid is exhausted.
        """
        if self._asked() >= self.spec.trials:
            return None
        params = self.spec.param_objects()
        trial = self.study.ask({p.key: p.distribution() for p in params})
        if trial.number >= self.spec.trials:
            # Another runner took the last trial between our count and our ask.
            trial.set_user_attr(_OVER_BUDGET_ATTR, True)
            self.study.tell(trial, state=_state("FAIL"))
            return None
        overrides = [*self.spec.overrides, *(assignment(p.key, trial.params[p.key]) for p in params)]
        return trial.number, overrides

    def report(self, number: int, epoch: int, value: float) -> bool:
        """Record the metric after ``epoch``; True when the pruner says to stop this trial."""
        import optuna

        trial = optuna.trial.Trial(self.study, self._trial_id(number))
        if not math.isfinite(value):
            return True
        trial.report(value, epoch)
        return self.spec.prune != "none" and bool(trial.should_prune())

    def finish(self, number: int, outcome: str, value: float | None) -> None:
        """Tell the study how the trial's run ended: ``finished``, ``pruned``, or anything else (failed)."""
        # Study.tell takes the trial's number (not its storage id).
        if outcome == "finished" and value is not None and math.isfinite(value):
            self.study.tell(number, value, skip_if_finished=True)
        elif outcome == "pruned":
            self.study.tell(number, state=_state("PRUNED"), skip_if_finished=True)
        else:
            self.study.tell(number, state=_state("FAIL"), skip_if_finished=True)

    def done(self) -> bool:
        """Every trial asked for has ended and no more will be asked."""
        trials = self._real_trials()
        finished = [t for t in trials if t.state.is_finished()]
        return self._asked() >= self.spec.trials and len(finished) == len(trials)

    def best(self) -> Any | None:
        complete = [t for t in self._real_trials() if t.state.name == "COMPLETE"]
        if not complete:
            return None
        pick = max if self.spec.direction == "maximize" else min
        return pick(complete, key=lambda t: t.value)

    def rows(self) -> list[dict]:
        """``sweep show``: one row a trial, best first, with only the settings that vary."""
        trials = self._real_trials()
        varying = [p.key for p in self.spec.param_objects()
                   if len({repr(t.params.get(p.key)) for t in trials if p.key in t.params}) > 1]
        rows = [
            {
                "trial": t.number,
                "status": _status_word(t.state.name),
                self.spec.metric: t.value,
                **{key: t.params.get(key) for key in varying},
                "run": t.user_attrs.get("run_id"),
            }
            for t in trials
        ]
        sign = -1 if self.spec.direction == "maximize" else 1
        rows.sort(key=lambda r: (r[self.spec.metric] is None, sign * (r[self.spec.metric] or 0), r["trial"]))
        return rows

    def set_run(self, number: int, run_id: str) -> None:
        """Keep the trial's run id in the study, so `sweep show` on any box names the run."""
        self._storage.set_trial_user_attr(self._trial_id(number), "run_id", run_id)

    # -- plumbing ---------------------------------------------------------------------

    def _trial_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def _real_trials(self) -> list[Any]:
        return [t for t in self.study.get_trials(deepcopy=False) if not t.user_attrs.get(_OVER_BUDGET_ATTR)]

    def _asked(self) -> int:
        """Trials handed out so far (a grid's enqueued points wait until asked for)."""
        return sum(t.state.name != "WAITING" for t in self._real_trials())


def _check_spec(spec: SweepSpec) -> None:
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {spec.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if spec.prune not in PRUNERS:
        raise ConfigError(f"--prune {spec.prune!r}: expected one of {', '.join(PRUNERS)}")
    if spec.metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"--metric {spec.metric!r}: expected one of {', '.join(METRIC_DIRECTIONS)}")
    if spec.trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {spec.trials}")
    if spec.sampler == "grid":
        size = grid_size(spec.param_objects())
        if size is None:
            raise ConfigError("--sampler grid takes only --grid and --choice values (a range has no grid)")
        if spec.trials > size:
            raise ConfigError(f"--trials {spec.trials} is more than the grid's {size} points; use --trials {size}")


def _enqueue_grid(study: Any, spec: SweepSpec) -> None:
    """Every grid point as an enqueued trial, each handed out once by ``ask``.

    Optuna's GridSampler stops the study from inside ``tell`` when the grid is
    used up, which only works within ``Study.optimize``; enqueued trials give
    the same grid to any number of runners asking from outside it.
    """
    params = spec.param_objects()
    for point in itertools.product(*(p.values for p in params)):
        study.enqueue_trial(dict(zip((p.key for p in params), point, strict=True)))


def _sampler(spec: SweepSpec) -> Any:
    import optuna

    if spec.sampler in ("grid", "random"):  # a grid's points are enqueued; nothing is left to sample
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()


def _pruner(spec: SweepSpec) -> Any:
    import optuna

    if spec.prune == "median":
        # Two trials complete before any is compared with them; a first validation is never pruned.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _state(name: str) -> Any:
    import optuna

    return getattr(optuna.trial.TrialState, name)


def _status_word(state: str) -> str:
    return {"COMPLETE": "finished", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running",
            "WAITING": "waiting"}.get(state, state.lower())
