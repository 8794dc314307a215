"""engine.run.sweep_space: sweep options parsed and checked before any trial starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import parse_value
from engine.errors import ConfigError
from engine.run.sweep_space import assignment, check_against, grid_size, parse_param, parse_space


def test_each_kind_parses():
    grid = parse_param("grid", "train.learning_rate=[1e-3, 3e-3]")
    assert grid.values == (1e-3, 3e-3) and grid.listed
    choice = parse_param("choice", "train.batch_size=[32,64,128]")
    assert choice.values == (32, 64, 128)
    log = parse_param("loguniform", "train.weight_decay=1e-5:1e-3")
    assert (log.low, log.high, log.listed) == (1e-5, 1e-3, False)
    assert log.distribution().log is True


@pytest.mark.parametrize(
    "kind, text, message",
    [
        ("grid", "train.learning_rate=1e-3", "must be a non-empty list"),
        ("grid", "train.learning_rate=[]", "must be a non-empty list"),
        ("choice", "train.batch_size=[32, 32]", "listed twice"),
        ("uniform", "train.learning_rate=0.1:0.01", "low 0.1 is above high 0.01"),
        ("loguniform", "train.weight_decay=0:1e-3", "needs LOW > 0"),
        ("uniform", "train.learning_rate=fast", "expected LOW:HIGH"),
        ("grid", "learning_rate=[1]", "expected section.field="),
    ],
)
def test_bad_options_are_one_line_with_the_right_shape(kind, text, message):
    with pytest.raises(ConfigError, match=message):
        parse_param(kind, text)


def test_a_field_searched_twice_or_none_at_all():
    with pytest.raises(ConfigError, match="searched twice"):
        parse_space({"grid": ["train.learning_rate=[1e-3]"], "uniform": ["train.learning_rate=0.1:0.2"]})
    with pytest.raises(ConfigError, match="at least one"):
        parse_space({})


def test_values_are_checked_against_the_preset():
    check_against(parse_space({"choice": ["train.batch_size=[16, 32]"]}), "lenet5-digits")
    with pytest.raises(ConfigError, match="nosuch"):
        check_against(parse_space({"choice": ["train.nosuch=[1, 2]"]}), "lenet5-digits")
    with pytest.raises(ConfigError, match="batch_size"):
        check_against(parse_space({"choice": ["train.batch_size=[0, 32]"]}), "lenet5-digits")


def test_grid_size():
    params = parse_space({"grid": ["train.learning_rate=[1e-3, 3e-3]", "train.batch_size=[32, 64, 128]"]})
    assert grid_size(params) == 6
    assert grid_size(parse_space({"uniform": ["train.learning_rate=0.1:0.2"]})) is None


scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
)


@given(scalars)
def test_an_assignment_reads_back_as_the_value_it_was_made_from(value):
    key, _, raw = assignment("train.x", value).partition("=")
    assert key == "train.x"
    back = parse_value(raw)
    assert back == value and type(back) is type(value)
