"""engine.train.faults: the CONVDECK_FAULTS rules that stand in for a GPU running out of memory."""

from __future__ import annotations

import pytest

from engine.config import ConfigError
from engine.train.faults import Faults, parse_faults


def test_nothing_set_means_no_faults(monkeypatch):
    monkeypatch.delenv("CONVDECK_FAULTS", raising=False)
    faults = parse_faults()
    assert not faults.active
    assert not faults.oom_at(1, 10_000)
    assert faults.next_fault_step(0) is None


def test_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:step=3")
    assert parse_faults().oom_steps == {3}


def test_text_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:step=3")
    assert parse_faults("nan:step=4").oom_steps == set()


def test_oom_batch_size_rule():
    faults = parse_faults("oom:batch_size>64")
    assert faults.oom_batch_above == 64
    assert faults.active
    assert (faults.oom_steps, faults.nan_steps) == (set(), set())


def test_oom_step_rule():
    faults = parse_faults("oom:step=5")
    assert faults.oom_steps == {5}
    assert faults.oom_batch_above is None
    assert faults.active


def test_nan_step_rule():
    faults = parse_faults("nan:step=7")
    assert faults.nan_steps == {7}
    assert faults.oom_steps == set()
    assert faults.active


def test_several_rules_with_spaces_and_empty_items():
    faults = parse_faults(" oom:batch_size>32 , oom:step=5,nan:step=9,, oom:step=12 ")
    assert faults.oom_batch_above == 32
    assert faults.oom_steps == {5, 12}
    assert faults.nan_steps == {9}


@pytest.mark.parametrize(
    "rule",
    [
        "oom",
        "oom:step",
        "oom:step=",
        "oom:step=x",
        "oom:step=-1",
        "oom:batch_size<64",
        "oom:batch_size=64",
        "nan:batch_size>64",
        "nan:step>3",
        "boom:step=3",
        "oom:step=3;nan:step=4",
        "oom:seconds=3",
        "nan:seconds=3",
        "stall:batch_size>3",
        "stall:step=1.5",
        "oom:step=2.0",
        "stall:seconds=",
        "stall:seconds=-1",
        "stall",
    ],
)
def test_bad_rules_are_config_errors(rule):
    with pytest.raises(ConfigError) as caught:
        parse_faults(f"oom:step=1,{rule}")
    message = str(caught.value)
    assert "CONVDECK_FAULTS" in message
    assert repr(rule) in message
    assert "oom:batch_size>N" in message


def test_oom_at_batch_size_fires_above_the_limit_every_time():
    faults = parse_faults("oom:batch_size>64")
    assert not faults.oom_at(1, 64)
    assert faults.oom_at(1, 65)
    assert faults.oom_at(2, 128)
    faults.mark_fired("oom", 2)
    assert faults.oom_at(2, 128)  # a memory limit is not one-shot
    assert not faults.oom_at(3, 32)


def test_oom_at_step_fires_once():
    faults = parse_faults("oom:step=3")
    assert not faults.oom_at(2, 10_000)
    assert faults.oom_at(3, 1)
    assert faults.oom_at(3, 1)  # until the trainer records it
    faults.mark_fired("oom", 3)
    assert not faults.oom_at(3, 1)
    assert not faults.oom_at(4, 1)


def test_nan_steps_do_not_run_out_of_memory():
    assert not parse_faults("nan:step=3").oom_at(3, 1)


def test_next_fault_step():
    faults = parse_faults("oom:step=5,nan:step=3,oom:step=10,oom:batch_size>8")
    assert faults.next_fault_step(0) == 3
    assert faults.next_fault_step(3) == 5
    assert faults.next_fault_step(4) == 5
    assert faults.next_fault_step(5) == 10
    assert faults.next_fault_step(10) is None
    faults.mark_fired("oom", 5)
    assert faults.next_fault_step(3) == 10


def test_faults_default_is_inactive():
    assert not Faults().active


def test_an_oom_and_a_nan_at_the_same_step_both_fire(tmp_path):
    fired_path = tmp_path / ".faults-fired"
    faults = parse_faults("oom:step=5,nan:step=5", fired_path=fired_path)
    assert faults.oom_at(5, 1) and faults.pending_nan_steps() == {5}
    faults.mark_fired("oom", 5)  # the OOM is raised first; the step runs again after it
    assert not faults.oom_at(5, 1)
    assert faults.pending_nan_steps() == {5} and faults.next_fault_step(4) == 5
    # The worker restarts after a remedy: what fired is read back, by kind.
    again = parse_faults("oom:step=5,nan:step=5", fired_path=fired_path)
    assert not again.oom_at(5, 1) and again.pending_nan_steps() == {5}
    again.mark_fired("nan", 5)
    assert parse_faults("nan:step=5", fired_path=fired_path).next_fault_step(0) is None


def test_stall_rules():
    faults = parse_faults("stall:step=5,stall:seconds=3")
    assert faults.stall_steps == {5}
    assert faults.stall_seconds == 3.0
    assert faults.active
    assert not faults.oom_at(5, 10_000) and faults.pending_nan_steps() == set()
    assert parse_faults("stall:step=2,stall:step=9,stall:seconds=0.25").stall_seconds == 0.25


def test_a_stall_lasts_an_hour_unless_told():
    assert parse_faults("stall:step=5").stall_seconds == 3600.0


def test_a_stall_holds_its_step_back_once_and_stays_fired_across_a_restart(tmp_path):
    fired_path = tmp_path / ".faults-fired"
    faults = parse_faults("stall:step=5,stall:seconds=3,oom:step=8", fired_path=fired_path)
    assert faults.next_fault_step(0) == 5  # the steps before it are reported before it stalls
    assert faults.take_stall(4) == 0.0
    assert faults.take_stall(5) == 3.0
    assert faults.take_stall(5) == 0.0
    assert faults.next_fault_step(4) == 8
    again = parse_faults("stall:step=5,stall:seconds=3", fired_path=fired_path)
    assert again.take_stall(5) == 0.0 and again.next_fault_step(0) is None
