"""The ``convdeck`` command line, run as a user would: a subprocess with its own CONVDECK_HOME.

Three layers: bad input and listings (no worker at all); following, Ctrl-C
and exit codes against tests/fake_worker.py (no TensorFlow, fast); and end
to end with the real worker training LeNet-5 on the digits.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pty
import re
import signal
import subprocess

import pytest
from conftest import (
    cli_command,
    dead_pid,
    epoch_end,
    make_run,
    one_line_error,
    run_cli,
    start_cli,
    started,
    step,
    wait_for,
)

from engine.run import lock, protocol
from engine.run.protocol import Step
from engine.run.store import LOCK_FILE, summarize_run, worker_liveness
from tui.progress import JsonLinesDisplay, PlainDisplay, make_display

FINISHED = {
    "type": "finished",
    "reason": "completed",
    "loss": 0.1,
    "accuracy": 0.97,
    "val_loss": 0.12,
    "val_accuracy": 0.96,
    "best_val_accuracy": 0.965,
    "steps": 20,
    "elapsed": 12.0,
}


def runs_json() -> list[dict]:
    result = run_cli("runs", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- listings --------------------------------------------------------------------------


def test_presets_lists_name_model_dataset_description(convdeck_home):
    result = run_cli("presets")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "MODEL", "DATASET", "DESCRIPTION"]
    lenet = next(row for row in rows if row.startswith("lenet5-digits "))
    assert lenet.split()[1:3] == ["lenet5", "digits"]


def test_presets_json_lists_every_preset_with_broken_user_ones(convdeck_home):
    user = convdeck_home / "presets"
    user.mkdir()
    (user / "mine.toml").write_text("[train]\nbatch_size = -1\n")
    result = run_cli("presets", "--json")
    assert result.returncode == 0, result.stderr
    presets = {p["name"]: p for p in json.loads(result.stdout)}
    assert presets["lenet5-digits"]["model"] == "lenet5"
    assert presets["lenet5-digits"]["dataset"] == "digits"
    assert presets["lenet5-digits"]["error"] is None
    assert "train.batch_size" in presets["mine"]["error"]
    assert "BROKEN" in run_cli("presets").stdout


def test_runs_without_runs(convdeck_home):
    result = run_cli("runs")
    assert result.returncode == 0 and "no runs yet" in result.stdout
    assert runs_json() == []


def fabricate_runs(home):
    """A finished, a crashed (dead pid, torn last line), a running and a failed run."""
    make_run(
        home,
        "20250101-000000-lenet5-digits-aaaa",
        [
            started(),
            step(10, 1, 0.4),
            epoch_end(1, 0.91),
            step(20, 2, 0.2),
            epoch_end(2, 0.95),
            FINISHED,
        ],
    )
    make_run(
        home,
        "20250102-000000-lenet5-digits-bbbb",
        [started(), step(1), step(7, 1, 0.345), '{"type": "step", "st'],
        pid=dead_pid(),
    )
    make_run(home, "20250103-000000-lenet5-digits-cccc", [started(), step(3)], pid="self")
    make_run(
        home,
        "20250104-000000-lenet5-digits-dddd",
        [
            started(),
            {"type": "failed", "error": "RuntimeError: boom", "traceback_path": "/x/traceback.txt"},
        ],
    )


def test_runs_tells_finished_crashed_running_and_failed_apart(convdeck_home):
    fabricate_runs(convdeck_home)
    statuses = {r["run_id"][-4:]: r for r in runs_json()}
    assert {k: r["status"] for k, r in statuses.items()} == {
        "aaaa": "finished",
        "bbbb": "crashed",
        "cccc": "running",
        "dddd": "failed",
    }
    assert statuses["bbbb"]["step"] == 7 and statuses["bbbb"]["last_loss"] == 0.345
    text = run_cli("runs").stdout.splitlines()
    assert text[0].split()[:5] == ["ID", "PRESET", "MODEL", "STATUS", "EPOCH/STEP"]
    crashed = next(row for row in text if "bbbb" in row).split()
    assert crashed[1:6] == ["lenet5-digits", "lenet5", "crashed", "1/7", "0.3450"]


def test_show_prints_status_config_best_and_last_metrics(convdeck_home):
    fabricate_runs(convdeck_home)
    result = run_cli("show", "20250101")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^status\s+finished", out, re.M)
    assert re.search(r"^best\s+val_accuracy 0.9500 at epoch 2", out, re.M)
    assert re.search(r"^last epoch\s+.*val_accuracy 0.9500", out, re.M)
    assert re.search(r"^final\s+.*val_accuracy 0.9600", out, re.M)
    assert "[train]" in out and "batch_size = 128" in out


def test_show_says_units_and_never_none(convdeck_home):
    fabricate_runs(convdeck_home)
    out = run_cli("show", "20250101").stdout
    last_step = "step 20  epoch 2  loss 0.2000  accuracy 0.8000  learning_rate 0.001  900 img/s"
    assert re.search(rf"^last step\s+{last_step}$", out, re.M)
    assert re.search(r"^final\s+20 steps  elapsed 12 s  ", out, re.M)
    # A worker that builds its model: no start time, no step, and what it does in words.
    make_run(convdeck_home, "20250105-000000-lenet5-digits-eeee", [{"type": "building"}], pid="self")
    out = run_cli("show", "20250105").stdout
    assert re.search(r"^status\s+running, building model$", out, re.M)
    assert re.search(r"^started\s+not yet$", out, re.M)
    assert re.search(r"^progress\s+no step yet$", out, re.M)
    # Events that leave out what they may: a checkpoint without its step, a bare stop.
    stopped = {"type": "finished", "reason": "stopped"}
    sparse = [started(), step(4), {"type": "checkpoint", "path": "ckpt"}, stopped]
    make_run(convdeck_home, "20250106-000000-lenet5-digits-ffff", sparse)
    out = run_cli("show", "20250106").stdout
    assert re.search(r"^checkpoint\s+step \?: ckpt$", out, re.M)
    assert re.search(r"^final\s+-$", out, re.M)
    for run in ("20250101", "20250102", "20250103", "20250104", "20250105", "20250106"):
        assert "None" not in run_cli("show", run).stdout, run


def test_show_of_a_crashed_run_with_a_torn_line(convdeck_home):
    fabricate_runs(convdeck_home)
    result = run_cli("show", "20250102-000000-lenet5-digits-bbbb", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["summary"]["status"] == "crashed"
    assert shown["metrics"]["last_step"]["loss"] == 0.345
    assert shown["metrics"]["unreadable_lines"] == 1
    skipped = "1 torn, garbage or wrong-typed lines in events.jsonl were skipped"
    assert skipped in run_cli("show", "20250102").stdout
    assert shown["config"]["name"] == "lenet5-digits"


def test_show_of_a_failed_run_names_the_error(convdeck_home):
    fabricate_runs(convdeck_home)
    out = run_cli("show", "20250104").stdout
    assert re.search(r"^error\s+RuntimeError: boom \(traceback: /x/traceback.txt\)", out, re.M)


# -- bad input: exit 2, one line, no traceback -------------------------------------------


def test_show_of_a_missing_run(convdeck_home):
    assert "no run matches 'nope'" in one_line_error(run_cli("show", "nope"))


def test_an_ambiguous_run_prefix(convdeck_home):
    fabricate_runs(convdeck_home)
    assert "matches 4 runs" in one_line_error(run_cli("show", "2025"))


def test_show_of_a_run_with_an_unreadable_config(convdeck_home):
    run_dir = make_run(convdeck_home, "r1", [started()])
    (run_dir / "config.toml").write_text("[train\n")
    error = one_line_error(run_cli("show", "r1"))
    assert "config.toml" in error and "line 1" in error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["run", "lenet5-digit"], "did you mean 'lenet5-digits'"),
        (["run", "--set", "train.batch_size=0"], "train.batch_size: got 0"),
        (["run", "--set", "train.epochs=-1"], "train.epochs: got -1"),
        (["run", "--set", "train.batchsize=64"], "unknown field 'train.batchsize'"),
        (["run", "--set", "batch_size=64"], "unknown field 'batch_size'; did you mean train.batch_size?"),
        (["run", "--set", "model.arch=resnett"], "did you mean 'resnet'"),
        (["run", "--set", "train.batch_size"], "expected section.field=VALUE"),
        (["run", "--set", "data.image_size=[8, 8]"], "needs images of at least 28x28; got 8x8"),
        (["run", "--bogus"], "--bogus"),
        (["attach", "nope"], "no run matches 'nope'"),
        (["attach"], "no live run"),
        (["resume", "nope"], "no run matches 'nope'"),
        (["ctl", "nope", "status"], "no run matches 'nope'"),
        (["ctl", "nope", "paws"], "did you mean 'pause'"),
        (["ctl", "nope", "remedy"], "remedy NAME missing"),
        (["ctl", "nope", "remedy", "halve"], "got 'halve'"),
        (["ctl", "nope", "pause", "now"], "takes no argument"),
    ],
)
def test_bad_input_exits_2_with_one_line(convdeck_home, args, expected):
    assert expected in one_line_error(run_cli(*args))
    assert not (convdeck_home / "runs").exists() or not any((convdeck_home / "runs").iterdir())


def test_a_malformed_user_preset_names_file_and_line(convdeck_home):
    user = convdeck_home / "presets"
    user.mkdir()
    (user / "broken.toml").write_text('description = "ok"\n[train]\nbatch_size = = 3\n')
    error = one_line_error(run_cli("run", "broken"))
    assert str(user / "broken.toml") in error and "line 3" in error


def test_version_and_attach_help(convdeck_home):
    version = run_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"convdeck \S+\n", version.stdout)
    usage = run_cli("attach", "--help")
    assert usage.returncode == 0 and "Usage: convdeck attach [OPTIONS] [RUN]" in usage.stdout


def test_resume_and_ctl_refuse_finished_runs(convdeck_home):
    fabricate_runs(convdeck_home)
    assert "finished; nothing to resume" in one_line_error(run_cli("resume", "20250101"))
    assert "already running (pid " in one_line_error(run_cli("resume", "20250103"))
    assert "is finished: no worker" in one_line_error(run_cli("ctl", "20250101", "status"))
    error = one_line_error(run_cli("ctl", "20250102", "stop"))
    assert "is crashed" in error and "convdeck resume" in error


def test_ctl_prints_the_workers_reply(convdeck_home, control_server):
    run_dir = make_run(convdeck_home, "r1", [started()], pid="self")
    server = control_server(run_dir, lambda r: {"ok": True, "state": "running", "step": 3})
    result = run_cli("ctl", "r1", "status")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply.pop("run") == runs_json()[0]  # the run's facts, as `runs --json` has them
    assert reply == {"ok": True, "state": "running", "step": 3}
    assert run_cli("ctl", "r1", "remedy", "halve-batch").returncode == 0
    assert server.requests[-1] == {"command": "remedy", "name": "halve-batch"}


def test_ctl_with_a_refusal_exits_2_and_an_unreachable_worker_1(convdeck_home, control_server):
    run_dir = make_run(convdeck_home, "r1", [started()], pid="self")
    server = control_server(run_dir, lambda r: {"ok": False, "error": "nothing to resume"})
    result = run_cli("ctl", "r1", "resume")
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    server.close()
    (run_dir / "control.sock").unlink()
    result = run_cli("ctl", "r1", "status")
    assert result.returncode == 1 and "no control socket" in result.stderr


# -- following a worker (the TF-free fake) ------------------------------------------------


def test_run_follows_to_the_end_with_plain_lines_in_a_pipe(convdeck_home, fake_worker):
    result = run_cli("run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # While the worker starts, the log says what it waits for (this fake loads no TensorFlow).
    assert lines[0] == "loading TensorFlow"
    assert re.match(r"run \S+ started on CPU:0", lines[1])
    assert lines[2] == "compiling the first step"
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    # Every epoch end is saved: only the last checkpoint is news, once, before the last line.
    assert [line for line in lines if "checkpoint" in line] == ["checkpoint at step 6"]
    assert lines[-2] == "checkpoint at step 6"
    assert "val_accuracy 0.8950" in lines[-1] and "completed" in lines[-1]
    assert "\x1b" not in result.stdout and "━" not in result.stdout


def test_run_json_prints_events_as_json_lines(convdeck_home, fake_worker):
    result = run_cli("run", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "finished"
    assert sum(e["type"] == "step" for e in events) == 6


def test_run_draws_a_progress_bar_on_a_terminal(convdeck_home, fake_worker):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*cli_command(), "run"], stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(30) == 0, output
    assert b"\x1b[" in output and b"val_accuracy 0.8950" in output


@pytest.mark.parametrize(
    ("mode", "code", "expected"),
    [
        ("fail", 1, "failed: RuntimeError: boom (traceback: "),
        ("user_error", 2, "image size 8x8 is below lenet5's minimum"),
        ("crash", 1, "crashed: the worker died without a final event (killed by signal 9)"),
    ],
)
def test_run_exit_codes_when_the_worker_fails(convdeck_home, fake_worker, mode, code, expected):
    fake_worker(mode)
    result = run_cli("run")
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_crash_report_quotes_the_workers_log(convdeck_home, fake_worker):
    fake_worker("crash")
    assert "its log ends: about to die" in run_cli("run").stderr
    assert runs_json()[0]["status"] == "crashed"


def read_json_line(process: subprocess.Popen) -> dict:
    return json.loads(process.stdout.readline())


def wait_for_step(process: subprocess.Popen, number: int) -> dict:
    """Read ``--json`` output until step ``number``."""
    for text in process.stdout:
        event = json.loads(text)
        if event["type"] == "step" and event["step"] >= number:
            return event
    raise AssertionError(f"the run ended before step {number}: {process.stderr.read()}")


def test_ctrl_c_stops_the_run_with_a_checkpoint(convdeck_home, fake_worker):
    fake_worker("serve")
    process = start_cli("run", "--json")
    assert read_json_line(process)["type"] == "run_started"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types[-2:] == ["checkpoint", "finished"]
    assert "stopping" in err
    assert runs_json()[0]["status"] == "stopped"


def test_second_ctrl_c_detaches_and_the_run_goes_on(convdeck_home, fake_worker, monkeypatch):
    fake_worker("serve")
    monkeypatch.setenv("FAKE_STOP_SECONDS", "3")  # a checkpoint that takes a while
    process = start_cli("run", "--json")
    run_id = read_json_line(process)["run_id"]
    process.send_signal(signal.SIGINT)
    assert "stopping" in process.stderr.readline()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert f"convdeck attach {run_id}" in err
    run_dir = convdeck_home / "runs" / run_id
    assert summarize_run(run_dir).status == "running"
    assert wait_for(lambda: summarize_run(run_dir).status == "stopped", 10)


def test_detach_then_runs_ctl_and_resume(convdeck_home, fake_worker):
    fake_worker("serve")
    result = run_cli("run", "--detach")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()  # the id alone on stdout: RUN=$(convdeck run --detach)
    assert re.fullmatch(r"\d{8}-\d{6}-\S+", run_id) and f"convdeck attach {run_id}" in result.stderr
    assert [r["status"] for r in runs_json() if r["run_id"] == run_id] == ["running"]
    assert wait_for(lambda: (convdeck_home / "runs" / run_id / "control.sock").exists(), 10)
    reply = json.loads(run_cli("ctl", run_id[:20], "status").stdout)
    assert reply["ok"] is True and reply["state"] == "running"
    assert run_cli("ctl", run_id, "stop").returncode == 0
    run_dir = convdeck_home / "runs" / run_id
    assert wait_for(lambda: summarize_run(run_dir).status == "stopped", 10)

    fake_worker("complete")
    result = run_cli("resume", run_id)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^run {run_id} resumed from step \d+", result.stdout, re.M)
    assert summarize_run(run_dir).status == "finished"


# -- the progress display ------------------------------------------------------------------


def as_events(*fields: dict) -> list:
    """Events as a reader of events.jsonl gets them: through the protocol's declarations."""
    return [protocol.from_dict({"time": 1.0, **event}) for event in fields]


def test_plain_display_writes_epoch_lines_and_throttled_step_lines():
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=0.0)
    display.handle(as_events(started(run_id="r1"), step(1, 1, 0.9)))
    display.handle(as_events(step(2, 1, 0.8), epoch_end(1, 0.75), {"type": "paused", "step": 2}))
    display.close()
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["loading TensorFlow", "run r1 started on CPU:0", "compiling the first step"]
    assert lines[3].startswith("epoch 1/2  step 1/20  loss 0.9000  accuracy 0.8000  900 img/s")
    assert lines[4].startswith("epoch 1/2  loss 0.3000  accuracy 0.9000  val_loss 0.3500")
    assert lines[5] == "paused at step 2 (go on: convdeck ctl r1 resume)"


def test_plain_display_says_how_to_answer_an_out_of_memory():
    stream = io.StringIO()
    remedies = [{"name": "halve-batch", "title": "Halve the batch", "effect": "batch 64"}]
    oom = {"type": "oom", "step": 7, "batch_size": 128, "remedies": remedies, "waiting": True}
    applied = {
        "type": "remedy_applied",
        "name": "halve-batch",
        "step": 7,
        "changes": {"train.batch_size": [128, 64]},
    }
    PlainDisplay(stream).handle(as_events(started(run_id="r1"), oom, applied))
    lines = stream.getvalue().splitlines()
    assert lines[-2] == (
        "out of memory at step 7 with batch 128; remedies: halve-batch; "
        "waiting for one: convdeck ctl r1 remedy halve-batch"
    )
    assert lines[-1] == "remedy halve-batch applied at step 7: train.batch_size 128 -> 64"


def test_plain_display_keeps_quiet_between_step_lines():
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=60.0)
    for n in range(1, 100):
        display.handle(as_events(step(n)))
    assert stream.getvalue() == "loading TensorFlow\n"  # said once, as the display opens


def test_plain_display_names_each_phase_before_the_first_step_once():
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=60.0)
    display.handle(as_events({"type": "building"}))
    display.handle(as_events({"type": "log", "message": "data: digits"}))  # no phase change
    display.handle(as_events(started(run_id="r1"), step(1), step(2)))
    assert stream.getvalue().splitlines() == [
        "loading TensorFlow",
        "building model",
        "data: digits",
        "run r1 started on CPU:0",
        "compiling the first step",
    ]


def test_plain_display_waits_a_full_period_after_the_first_step(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tui.progress.time.monotonic", lambda: clock[0])
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=5.0)
    clock[0] = 10.0
    display.handle(as_events(started(run_id="r1")))
    clock[0] = 20.0  # the first step, after 10 s of compiling: a few img/s, an ETA of hours
    display.handle(as_events(step(1)))
    clock[0] = 26.0
    display.handle(as_events(step(2)))
    step_lines = [line for line in stream.getvalue().splitlines() if " step " in line]
    assert len(step_lines) == 1 and step_lines[0].startswith("epoch 1/2  step 2/20")


def test_plain_display_says_the_newest_checkpoint_once_when_the_worker_ends():
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=60.0)
    display.handle(as_events(started(run_id="r1"), step(1, 1), epoch_end(1, 0.7)))
    display.handle(as_events({"type": "checkpoint", "step": 1}, step(2, 2)))
    display.handle(as_events({"type": "checkpoint", "step": 2}))
    assert "checkpoint" not in stream.getvalue()  # each epoch end is saved: no news
    display.handle(as_events({"type": "finished", "reason": "stopped", "steps": 2}))
    display.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "checkpoint at step 2" and sum("checkpoint" in line for line in lines) == 1


def test_plain_display_says_the_newest_checkpoint_when_it_closes_without_an_end():
    stream = io.StringIO()
    display = PlainDisplay(stream, line_every=60.0)
    display.handle(as_events(started(run_id="r1"), {"type": "checkpoint", "step": 0}, step(1)))
    display.close()  # the worker died, or Ctrl-C twice: where the run can go on from
    assert stream.getvalue().splitlines()[-1] == "checkpoint at step 0"


def test_json_display_writes_strict_json():
    stream = io.StringIO()
    step_line = Step(time=2.0, step=[1, 2], loss=[float("nan"), 0.5], accuracy=float("inf"))
    JsonLinesDisplay(stream).handle([step_line])
    assert json.loads(stream.getvalue()) == {
        "type": "step",
        "time": 2.0,
        "step": [1, 2],
        "loss": [None, 0.5],
        "accuracy": None,
    }


def test_make_display_picks_plain_lines_for_a_pipe():
    assert isinstance(make_display(stream=io.StringIO()), PlainDisplay)
    assert isinstance(make_display(json_lines=True, stream=io.StringIO()), JsonLinesDisplay)


# -- end to end with the real worker --------------------------------------------------------

# A NaN pauses a run by default, and a paused run waits for a person:
# here it stops instead, so a numerical failure fails the test fast.
REAL_RUN = ("--set", "train.on_nan=stop")

needs_worker = pytest.mark.skipif(
    importlib.util.find_spec("engine.train.worker") is None
    or importlib.util.find_spec("engine.train.data") is None,
    reason="the real worker (engine.train.worker, engine.train.data) has not landed yet",
)


@needs_worker
def test_run_lenet5_digits_reports_its_accuracy(convdeck_home):
    result = run_cli("run", "lenet5-digits", "--set", "train.epochs=2", *REAL_RUN, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    accuracy = re.search(r"completed: val_accuracy (\d\.\d+)", result.stdout)
    assert accuracy and float(accuracy.group(1)) > 0.5, result.stdout
    assert "\x1b" not in result.stdout
    # The wait before the first step is named, phase by phase, in the order the worker goes.
    waits = ["loading TensorFlow", "building model", "compiling the first step"]
    assert [line for line in result.stdout.splitlines() if line in waits] == waits
    (run,) = runs_json()
    assert run["status"] == "finished" and run["preset"] == "lenet5-digits"
    # The CLI returned at the run's last event; the worker ends by itself, cleanly, and
    # lets go of the run (its supervisor found nothing to report: no worker_exit).
    run_dir = convdeck_home / "runs" / run["run_id"]
    assert wait_for(lambda: worker_liveness(run_dir).pid is None, 60)
    assert lock.wait_free(run_dir / LOCK_FILE, 10)
    assert "worker_exit" not in (run_dir / "events.jsonl").read_text()


@needs_worker
def test_detached_real_run_answers_status_and_stops(convdeck_home):
    result = run_cli("run", "--detach", "--set", "train.epochs=200", *REAL_RUN)
    run_id = result.stdout.strip().splitlines()[-1].split()[-1]
    run_dir = convdeck_home / "runs" / run_id
    assert runs_json()[0]["status"] == "running"

    def training() -> bool:
        summary = summarize_run(run_dir)
        assert summary.status == "running", f"the run is {summary.status}: {summary.reason}"
        reply = json.loads(run_cli("ctl", run_id, "status").stdout or "{}")
        return reply.get("ok") is True and reply.get("state") == "running"

    assert wait_for(training, 60, interval=0.5)
    assert run_cli("ctl", run_id, "stop").returncode == 0
    assert wait_for(lambda: summarize_run(run_dir).status == "stopped", 60)
    assert wait_for(lambda: summarize_run(run_dir).pid is None, 30)


@needs_worker
def test_real_run_interrupted_then_resumed_continues_its_steps(convdeck_home):
    process = start_cli("run", "--json", "--set", "train.epochs=3", *REAL_RUN)
    wait_for_step(process, 20)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    stopped_at = json.loads(out.splitlines()[-1])
    assert stopped_at["type"] == "finished" and stopped_at["reason"] == "stopped"

    run_id = runs_json()[0]["run_id"]
    result = run_cli("resume", run_id, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    resumed = [json.loads(line) for line in result.stdout.splitlines()]
    assert resumed[0]["type"] == "building"  # TensorFlow loaded; the model comes next
    restart = next(e for e in resumed if e["type"] == "run_started")
    assert restart["resumed_from_step"] > 0
    first_step = next(e for e in resumed if e["type"] == "step")
    assert first_step["step"] == restart["resumed_from_step"] + 1
    assert resumed[-1]["reason"] == "completed"
    assert summarize_run(convdeck_home / "runs" / run_id).status == "finished"


@needs_worker
@pytest.mark.slow
def test_run_follows_the_worker_through_an_out_of_memory_remedy(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:batch_size>16")  # batch 32 "runs out of memory"
    args = ("--set", "train.epochs=1", "--set", "train.on_oom=halve-batch", *REAL_RUN)
    result = run_cli("run", "lenet5-digits", *args, timeout=170)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "out of memory at step 1 with batch 32" in result.stdout
    assert "remedy halve-batch applied at step 0: train.batch_size 32 -> 16" in result.stdout
    assert re.search(r"completed: val_accuracy \d\.\d+", result.stdout.splitlines()[-1])
