"""engine.run.sweep: an Optuna study whose trials become runs; shared through PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import uuid
from dataclasses import asdict

import pytest

from engine.errors import ConfigError
from engine.run.sweep import Sweep, SweepSpec
from engine.run.sweep_space import parse_space

POSTGRES = os.environ.get("CONVDECK_TEST_POSTGRES")


def spec(trials=4, sampler="tpe", prune="none", **space) -> SweepSpec:
    space = space or {"grid": ["train.learning_rate=[1e-3, 3e-3]"], "choice": ["train.batch_size=[32, 64]"]}
    params = parse_space(space)
    return SweepSpec("lenet5-digits", [], [asdict(p) for p in params], trials, sampler, prune)


def test_a_grid_hands_out_each_point_once_then_stops(tmp_path):
    sweep = Sweep.create("grid", spec(sampler="grid"), home=tmp_path)
    trials = []
    while (trial := sweep.next_trial()) is not None:
        trials.append(trial)
    points = {tuple(overrides) for _, overrides in trials}
    assert [n for n, _ in trials] == [0, 1, 2, 3] and len(points) == 4
    assert "train.batch_size=64" in trials[1][1]


def test_trials_end_as_their_runs_did_and_the_best_is_found(tmp_path):
    sweep = Sweep.create("s", spec(sampler="random"), home=tmp_path)
    numbers = [sweep.next_trial()[0] for _ in range(4)]
    for number, outcome, value in zip(numbers, ["finished", "failed", "finished", "pruned"], [0.9, None, 0.95, None],
                                      strict=True):
        sweep.finish(number, outcome, value)
    assert sweep.done() and sweep.best().number == numbers[2]
    rows = sweep.rows()
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "pruned"]
    assert rows[0]["val_accuracy"] == 0.95


def test_the_median_pruner_stops_a_trial_below_the_others(tmp_path):
    sweep = Sweep.create("p", spec(trials=3, sampler="random", prune="median"), home=tmp_path)
    for _ in range(2):
        number, _ = sweep.next_trial()
        for epoch in range(4):
            assert sweep.report(number, epoch, 0.8 + epoch * 0.01) is False
        sweep.finish(number, "finished", 0.83)
    number, _ = sweep.next_trial()
    assert sweep.report(number, 0, 0.1) is False  # the first validation is never judged
    assert sweep.report(number, 1, 0.1) is True


def test_joining_with_other_settings_is_refused(tmp_path):
    Sweep.create("same", spec(), home=tmp_path)
    Sweep.create("same", spec(), home=tmp_path)  # the same options join
    with pytest.raises(ConfigError, match="already exists with other settings"):
        Sweep.create("same", spec(trials=5), home=tmp_path)
    with pytest.raises(ConfigError, match="no sweep named 'other'"):
        Sweep("other", home=tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": "bayes"}, "--sampler 'bayes'"),
        ({"prune": "hyperband"}, "--prune 'hyperband'"),
        ({"sampler": "grid", "trials": 9}, "more than the grid's 4 points"),
        ({"sampler": "grid", "uniform": ["train.learning_rate=0.1:0.2"]}, "a range has no grid"),
    ],
)
def test_bad_sweep_options_are_one_line(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Sweep.create("bad", spec(**kwargs), home=tmp_path)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_storage_is_one_line_within_ten_seconds(tmp_path):
    started = time.monotonic()
    url = f"postgresql://someone:secret@127.0.0.1:{_closed_port()}/nothing"
    with pytest.raises(ConfigError, match=r"cannot open the sweep storage postgresql://someone:\*\*\*@127"):
        Sweep.create("x", spec(), storage=url, home=tmp_path)
    assert time.monotonic() - started < 10


def _ask_all(name: str, url: str, out) -> None:
    sweep = Sweep(name, url)
    mine = []
    while (trial := sweep.next_trial()) is not None:
        mine.append(trial[0])
        sweep.finish(trial[0], "finished", 0.5)
    out.put(mine)


@pytest.mark.skipif(
    not POSTGRES and not os.environ.get("CI"), reason="CONVDECK_TEST_POSTGRES is not set (see .ci/postgres)"
)
def test_two_runners_share_one_study_through_postgresql_and_never_run_a_trial_twice():
    assert POSTGRES, "CI must start PostgreSQL (.ci/postgres) and set CONVDECK_TEST_POSTGRES"
    name = f"shared-{uuid.uuid4().hex[:8]}"
    Sweep.create(name, spec(trials=12, sampler="random"), storage=POSTGRES)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    runners = [context.Process(target=_ask_all, args=(name, POSTGRES, out)) for _ in range(2)]
    for runner in runners:
        runner.start()
    got = [out.get(timeout=120) for _ in runners]
    for runner in runners:
        runner.join(timeout=60)
    flat = sorted(n for mine in got for n in mine)
    assert flat == list(range(12))  # every trial once, none twice, none past --trials
    assert Sweep(name, POSTGRES).done()
