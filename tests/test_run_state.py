"""tui.run_state: folding a run's events into what the app shows (no terminal needed)."""

from tui.run_state import RunState


def started() -> dict:
    return {"type": "run_started", "run_id": "r", "pid": 4242, "steps_per_epoch": 10, "epochs": 2}


def test_a_log_event_that_says_restarting_marks_the_restart_whatever_its_wording():
    state = RunState("r")
    state.apply([started(), {"type": "log", "message": "worker going down", "restarting": "mixed-precision"}])
    assert state.status == "restarting" and "mixed-precision" in state.reason


def test_a_run_recorded_before_the_field_is_still_understood():
    state = RunState("r")
    state.apply([started(), {"type": "log", "message": "applying remedy halve-batch: restarting"}])
    assert state.status == "restarting" and "halve-batch" in state.reason


def test_other_log_lines_change_nothing_and_a_finished_run_never_restarts():
    state = RunState("r")
    state.apply([started(), {"type": "log", "message": "hello", "restarting": ""}])
    assert state.status == "running"
    state.apply([{"type": "finished", "reason": "completed"}])
    state.apply([{"type": "log", "message": "x", "restarting": "halve-batch"}])
    assert state.status != "restarting"
