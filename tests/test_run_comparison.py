"""Which settings differ between runs, and the figures beside them (engine.run.run_comparison)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.run.facts import RunFacts
from engine.run.protocol import Finished
from engine.run.run_comparison import (
    FIGURES,
    compare_runs,
    differing_settings,
    final_loss,
    flatten_config,
    setting_text,
    setting_value,
)
from tests.fake_engine import make_preset, run_started, training_events

NAMES = st.sampled_from(["arch", "blocks", "batch_size", "learning_rate", "epochs", "jit_compile", "weights"])
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=False, width=32),
    st.sampled_from(["auto", "adam", "sgd"]),
    st.lists(st.integers(1, 3), max_size=3),
)
CONFIGS = st.dictionaries(
    st.sampled_from(["model", "data", "train"]), st.dictionaries(NAMES, LEAVES, max_size=4), max_size=3
)


def same(a, b) -> bool:
    """Equal as a preset would read them: same type and value, NaN equal to NaN, lists item by item."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(CONFIGS, min_size=1, max_size=5))
def test_a_setting_is_listed_exactly_when_two_runs_disagree_on_it(configs):
    flats = [flatten_config(config) for config in configs]
    listed = differing_settings(configs)
    for name in {name for flat in flats for name in flat}:
        values = [flat.get(name) for flat in flats]
        disagree = any(not same(values[0], value) for value in values[1:])
        assert (name in listed) == disagree, (name, values)


@settings(max_examples=100, deadline=None)
@given(st.lists(CONFIGS, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_the_order_of_the_runs_and_a_repeated_run_change_nothing(configs, random):
    shuffled = list(configs)
    random.shuffle(shuffled)
    assert set(differing_settings(shuffled)) == set(differing_settings(configs))
    assert differing_settings([*configs, configs[0]]) == differing_settings(configs)


@settings(max_examples=100, deadline=None)
@given(CONFIGS)
def test_runs_of_one_config_differ_in_nothing_and_every_leaf_has_a_dotted_name(config):
    assert differing_settings([config, config, config]) == []
    for dotted, value in flatten_config(config).items():
        section, _, name = dotted.partition(".")
        assert same(config[section][name], value)


def test_settings_come_in_the_configs_own_order_and_the_description_is_not_one():
    a = {"name": "a", "description": "one", "model": {"arch": "lenet5"}, "train": {"batch_size": 32}}
    b = {"name": "b", "description": "two", "model": {"arch": "resnet"}, "train": {"batch_size": 64}}
    assert differing_settings([a, b]) == ["name", "model.arch", "train.batch_size"]


def test_a_setting_an_older_run_lacks_counts_as_unset():
    older = {"train": {"batch_size": 32}}
    newer = {"train": {"batch_size": 32, "jit_compile": None}, "data": {"seed": 1}}
    assert differing_settings([older, newer]) == ["data.seed"]


def test_one_and_one_point_zero_and_true_are_three_different_settings():
    configs = [{"train": {"x": 1}}, {"train": {"x": 1.0}}, {"train": {"x": True}}]
    assert differing_settings(configs) == ["train.x"]
    assert differing_settings(configs[:1] * 2) == []


@given(st.lists(LEAVES, min_size=2, max_size=8))
def test_values_of_mixed_types_sort_without_error(values):
    present = [setting_value(value) for value in values if value is not None]
    assert sorted(present) == sorted(reversed(present))
    assert all(setting_value(value) is None for value in values if value is None)


def test_values_read_as_a_user_writes_them_in_set():
    assert [setting_text(v) for v in (True, 1e-3, 64, [2, 2, 2, 2], "auto")] == [
        "true",
        "0.001",
        "64",
        "[2,2,2,2]",
        "auto",
    ]
    assert setting_value(32) < setting_value(64) < setting_value("auto")


# -- the figures, from the one fold -------------------------------------------------------


def facts(run_id: str, steps: int, **train) -> RunFacts:
    config = make_preset("lenet5-digits", train={"epochs": 5, **train}).config
    return RunFacts().apply([run_started(run_id, config), *training_events(steps)])


def test_a_comparison_has_one_record_a_run_with_its_differing_settings_and_best_figures():
    runs = [facts("a", 300, batch_size=32), facts("b", 250, batch_size=64, learning_rate=3e-3)]
    comparison = compare_runs(runs)
    assert comparison.settings == ["train.batch_size", "train.learning_rate"]
    first = comparison.records[0]
    assert first[0] == "a"
    assert [str(value) for value in first[1:3]] == ["32", "0.001"]
    figures = dict(zip(FIGURES, first[3:], strict=True))
    assert figures == {
        "best_val_accuracy": runs[0].best_val_accuracy,
        "best_epoch": runs[0].best_epoch,
        "final_loss": runs[0].last_epoch.loss,
        "status": "running",
    }
    assert figures["best_epoch"] == 3


def test_the_final_loss_is_the_finished_events_then_the_last_epochs_then_the_last_steps():
    young = facts("young", 50)  # not one epoch yet
    assert final_loss(young) == young.last_loss
    grown = facts("grown", 150)
    assert final_loss(grown) == grown.last_epoch.loss != grown.last_loss
    grown.fold(Finished(time=1_700_000_100.0, reason="completed", loss=0.0123))
    assert final_loss(grown) == 0.0123
    assert compare_runs([grown]).records[0][-1] == "finished"
