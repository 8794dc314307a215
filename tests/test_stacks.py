"""``ctl RUN stacks``: every thread's Python stack, from the worker, into worker.log."""

from __future__ import annotations

import threading

from engine.run.control import ControlState


def test_stacks_name_every_thread_and_land_in_worker_log(tmp_path):
    from engine.train.worker import dump_stacks

    waiting = threading.Event()

    def a_stalled_input_pipeline() -> None:
        waiting.wait(30)

    thread = threading.Thread(target=a_stalled_input_pipeline, daemon=True)
    thread.start()
    try:
        text = dump_stacks(tmp_path)
    finally:
        waiting.set()
        thread.join()
    assert "a_stalled_input_pipeline" in text  # where the stuck thread waits
    assert "test_stacks_name_every_thread_and_land_in_worker_log" in text
    log = (tmp_path / "worker.log").read_text()
    assert "convdeck ctl stacks" in log and "a_stalled_input_pipeline" in log


def test_stop_takes_a_reason_for_a_pruned_trial():
    control = ControlState()
    assert control.request("stop", "pruned")["ok"] and control.stop_reason == "pruned"
    refused = ControlState().request("stop", "bored")
    assert not refused["ok"] and "expected no reason or one of stopped, pruned" in refused["error"]
    assert ControlState().request("stop")["ok"]
