"""tf.distribute on a CPU: MirroredStrategy over logical CPUs, two workers on localhost.

Logical devices must be set before TensorFlow's runtime starts, and a
multi-worker strategy needs a process per worker, so every training run here
is a worker process of its own (``python -m engine.train.worker`` or the
``convdeck`` command), never this test process. The checks of TF_CONFIG,
``--workers`` and the rendezvous of workers are TF-free and fast.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli_command, event_dicts, one_line_error, run_cli, wait_for

from engine.config import ConfigError
from engine.presets import load_preset
from engine.remedies import applicable_remedies, apply_remedy
from engine.run.store import create_run_dir
from engine.train import strategy

PRESET = "lenet5-digits"
SMALL = ["data.image_size=[28, 28]"]
# Three whole epochs of the digits: enough for an accuracy band.
THREE_EPOCHS = [*SMALL, "train.epochs=3"]
# A short multi-worker run: 2 epochs of 5 steps, a checkpoint every 4.
SHORT = [*SMALL, "train.epochs=2", "train.steps_per_epoch=5", "train.checkpoint_every=4"]
WORKER_WAIT = 240.0  # seconds a training process may take on a busy 2-CPU machine


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (bound and released at once)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def start_worker(home: Path, overrides: list[str], env: dict | None = None):
    """A run directory for the preset with ``overrides``, and its worker process."""
    config = load_preset(PRESET, overrides)
    run_dir = create_run_dir(config, home)
    log = open(run_dir / "worker.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.train.worker", str(run_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )
    log.close()
    return run_dir, process


def finish(process: subprocess.Popen, run_dir: Path) -> list[dict]:
    try:
        code = process.wait(WORKER_WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    events = event_dicts(run_dir / "events.jsonl")
    assert code == 0, (code, events[-1:], (run_dir / "worker.log").read_text()[-3000:])
    return events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def first_loss(events: list[dict]) -> float:
    loss = of_type(events, "step")[0]["loss"]
    return loss[0] if isinstance(loss, list) else loss


# -- MirroredStrategy over logical CPUs ---------------------------------------------------


@pytest.mark.slow
def test_mirrored_over_two_cpus_trains_like_one_device(convdeck_home: Path) -> None:
    """Same global batch: the same first-step loss, and accuracy in the same band."""
    one_dir, one = start_worker(convdeck_home, [*THREE_EPOCHS, "train.strategy=one_device"])
    two_dir, two = start_worker(
        convdeck_home, [*THREE_EPOCHS, "train.strategy=mirrored", "train.virtual_cpus=2"]
    )
    single, mirrored = finish(one, one_dir), finish(two, two_dir)

    started = of_type(mirrored, "run_started")[0]
    assert started["strategy"] == "mirrored"
    assert started["replicas"] == 2
    assert started["per_replica_batch"] * 2 == started["config"]["train"]["batch_size"] == 32
    assert [d.split("device:")[-1] for d in started["replica_devices"]] == ["CPU:0", "CPU:1"]
    assert of_type(single, "run_started")[0]["replicas"] == 1

    # The global batch is split, the loss scaled by it: the same number to float tolerance.
    assert first_loss(mirrored) == pytest.approx(first_loss(single), rel=1e-4, abs=1e-5)
    a = of_type(single, "finished")[-1]["val_accuracy"]
    b = of_type(mirrored, "finished")[-1]["val_accuracy"]
    assert a > 0.8 and b > 0.8, (a, b)
    assert abs(a - b) < 0.06, (a, b)
    # Same number of steps: the global batch, not the per-replica one, sets an epoch.
    assert of_type(single, "finished")[-1]["steps"] == of_type(mirrored, "finished")[-1]["steps"]
    assert (two_dir / "model.keras").exists()


def test_mirrored_epoch_metrics_are_one_devices_with_a_short_batch(convdeck_home: Path) -> None:
    """A batch larger than the split: every step is one short batch of all 1,437 examples,
    split 719 + 718 over two replicas. Each replica divides its summed loss by the global
    batch's real size, so the epoch's loss and accuracy are one device's."""
    overrides = [*SMALL, "train.epochs=2", "train.batch_size=2048"]
    one_dir, one = start_worker(convdeck_home, [*overrides, "train.strategy=one_device"])
    two_dir, two = start_worker(
        convdeck_home, [*overrides, "train.strategy=mirrored", "train.virtual_cpus=2"]
    )
    single, mirrored = of_type(finish(one, one_dir), "epoch_end"), of_type(finish(two, two_dir), "epoch_end")
    assert len(single) == len(mirrored) == 2
    for a, b in zip(single, mirrored, strict=True):
        assert a["train_examples"] == b["train_examples"] == 1437
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        # Float rounding may flip one borderline prediction in 1,437.
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1.5 / 1437)
    # A mean over the examples (about ln 10 from fresh weights), not a sum over 2,048.
    assert single[0]["loss"] > 1.5, single


@pytest.mark.slow
def test_halve_batch_halves_the_global_batch_under_mirrored(convdeck_home: Path) -> None:
    """An OOM on a replica (per-replica batch 32 > 16) halves the global batch 64 -> 32."""
    run_dir, process = start_worker(
        convdeck_home,
        [
            *SMALL,
            "train.epochs=1",
            "train.steps_per_epoch=3",
            "train.batch_size=64",
            "train.strategy=mirrored",
            "train.virtual_cpus=2",
            "train.on_oom=halve-batch",
        ],
        env={"CONVDECK_FAULTS": "oom:batch_size>16"},
    )
    events = finish(process, run_dir)
    oom = of_type(events, "oom")[0]
    assert oom["batch_size"] == 64
    assert oom["device"].endswith("device:CPU:0"), oom
    assert "halve-batch" in [r["name"] for r in oom["remedies"]]
    remedy = of_type(events, "remedy_applied")[0]
    assert remedy["changes"]["train.batch_size"] == [64, 32]
    restarted = of_type(events, "run_started")[-1]
    assert (restarted["replicas"], restarted["per_replica_batch"]) == (2, 16)
    assert of_type(events, "finished")[-1]["reason"] == "completed"


def test_halving_must_leave_a_batch_that_splits_over_the_replicas() -> None:
    config = load_preset(PRESET, ["train.batch_size=12"])
    names = lambda replicas: [r["name"] for r in applicable_remedies(config, replicas)]  # noqa: E731
    assert "halve-batch" in names(2)  # 6 = 2 x 3
    assert "halve-batch" not in names(4)  # 6 over 4
    assert "halve-accumulate" not in names(4)
    assert "mixed-precision" in names(4)
    with pytest.raises(ConfigError, match=r"half the batch \(6\) does not split evenly over 4 replicas"):
        apply_remedy("halve-batch", config, replicas=4)
    halved, changes = apply_remedy("halve-batch", config, replicas=2)
    assert halved.train.batch_size == 6 and changes["train.batch_size"] == [12, 6]


# -- two workers on localhost ---------------------------------------------------------------


def start_cli_worker(workers: str, index: int, overrides: list[str], *args: str):
    return subprocess.Popen(
        [*cli_command(), "run", PRESET, "--workers", workers, "--worker-index", str(index),
         *sets(overrides), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def runs_by_index(home: Path) -> dict[int, Path]:
    """Each worker's run directory, by the index its run_started event names."""
    found = {}
    for run_dir in (home / "runs").iterdir():
        started = of_type(event_dicts(run_dir / "events.jsonl"), "run_started")
        if started:
            found[started[0]["worker_index"]] = run_dir
    return found


@pytest.fixture
def cluster() -> Iterator[str]:
    ports = free_ports(2)
    yield f"localhost:{ports[0]},localhost:{ports[1]}"


@pytest.mark.slow
def test_two_workers_finish_and_only_the_chief_records(convdeck_home: Path, cluster: str) -> None:
    processes = [start_cli_worker(cluster, i, SHORT) for i in (0, 1)]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=WORKER_WAIT))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, (out, err)

    runs = runs_by_index(convdeck_home)
    chief, other = event_dicts(runs[0] / "events.jsonl"), event_dicts(runs[1] / "events.jsonl")
    started = of_type(chief, "run_started")[0]
    assert started["strategy"] == "multi_worker"
    assert started["workers"] == 2 and started["chief"] is True
    assert started["replicas"] == 2 and started["per_replica_batch"] == 16
    assert started["cluster"] == cluster.split(",")
    assert len(started["replica_devices"]) == 2
    assert of_type(chief, "finished")[-1]["steps"] == 10
    assert len(of_type(chief, "step")) == 10 and of_type(chief, "checkpoint")
    assert list((runs[0] / "checkpoints").glob("ckpt-10.index"))
    assert (runs[0] / "model.keras").exists()

    # The other worker keeps its start and its end, nothing of the chief's record.
    assert {e["type"] for e in other} <= {"building", "run_started", "finished", "log", "worker_exit"}
    assert of_type(other, "run_started")[0]["chief"] is False
    assert of_type(other, "finished")[-1]["steps"] == 10
    assert not list((runs[1] / "checkpoints").iterdir())
    assert not (runs[1] / "model.keras").exists()
    assert not list(runs[1].glob(".worker-*"))  # its share of each save is removed
    assert json.loads((runs[1] / "tf_config.json").read_text())["task"]["index"] == 1


@pytest.mark.slow
def test_resume_after_killing_the_chief(convdeck_home: Path, cluster: str) -> None:
    """The other worker fails in seconds; both resume from the chief's last checkpoint."""
    long_run = [*SMALL, "train.epochs=50", "train.steps_per_epoch=10", "train.checkpoint_every=4"]
    for index in (0, 1):
        started = start_cli_worker(cluster, index, long_run, "--detach")
        out, err = started.communicate(timeout=WORKER_WAIT)
        assert started.returncode == 0, err
    assert wait_for(lambda: len(runs_by_index(convdeck_home)) == 2, WORKER_WAIT, 0.5)
    runs = runs_by_index(convdeck_home)

    def checkpoints() -> list[int]:
        return [e["step"] for e in of_type(event_dicts(runs[0] / "events.jsonl"), "checkpoint")]

    assert wait_for(lambda: any(s >= 8 for s in checkpoints()), WORKER_WAIT, 0.2)
    chief_pid = int((runs[0] / "worker.pid").read_text().split()[0])
    os.kill(chief_pid, signal.SIGKILL)
    last_saved = latest_checkpoint_step(runs[0])
    assert last_saved >= 8

    def other_failed() -> dict | None:
        failed = of_type(event_dicts(runs[1] / "events.jsonl"), "failed")
        return failed[-1] if failed else None

    assert wait_for(lambda: other_failed() is not None, 60.0, 0.2)
    assert "lost contact with another worker" in other_failed()["error"]
    assert wait_for(lambda: _status(runs[0]) == "crashed", 30.0, 0.2)
    assert _status(runs[1]) == "failed"

    # `convdeck resume` rejoins the cluster the run kept (tf_config.json): no --workers.
    for index in (0, 1):
        resumed = run_cli("resume", runs[index].name, "--detach")
        assert resumed.returncode == 0, resumed.stderr

    def resumed_start(index: int) -> dict | None:
        started = of_type(event_dicts(runs[index] / "events.jsonl"), "run_started")
        return started[-1] if len(started) == 2 else None

    assert wait_for(lambda: resumed_start(0) and resumed_start(1), WORKER_WAIT, 0.2)
    assert resumed_start(0)["resumed_from_step"] == last_saved
    assert resumed_start(1)["resumed_from_step"] == last_saved  # the chief's state, broadcast

    def steps_since_resume() -> list[int]:
        events = event_dicts(runs[0] / "events.jsonl")
        starts = [i for i, e in enumerate(events) if e["type"] == "run_started"]
        return [e["step"] for e in of_type(events[starts[-1]:], "step")]

    assert wait_for(lambda: len(steps_since_resume()) > 2, WORKER_WAIT, 0.2)
    # Stepping on from the checkpoint, not from where the killed chief had got to.
    assert steps_since_resume()[0] == last_saved + 1
    # A stop through the chief stops every worker, each with a final checkpoint.
    assert run_cli("ctl", runs[0].name, "stop").returncode == 0
    assert wait_for(lambda: _status(runs[0]) == "stopped" and _status(runs[1]) == "stopped", 60)


def latest_checkpoint_step(run_dir: Path) -> int:
    """The step of the checkpoint TensorFlow's state file names as the latest."""
    state = (run_dir / "checkpoints" / "checkpoint").read_text()
    first = state.splitlines()[0]  # model_checkpoint_path: "ckpt-12"
    return int(first.rsplit("-", 1)[1].strip('"'))


def _status(run_dir: Path) -> str:
    from engine.run.store import summarize_run

    return summarize_run(run_dir).status


# -- bad input: one line, exit 2 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.strategy=banana"], "train.strategy: got 'banana'; must be 'auto'"),
        (["--workers", "a:1,b"], "--workers needs --worker-index"),
        (["--workers", "a:1,b", "--worker-index", "0"], "'b' is not host:port"),
        (["--workers", "a:1,b:x", "--worker-index", "0"], "port 'x' is not a number"),
        (["--workers", "a:1,,b:2", "--worker-index", "0"], "--workers: an empty entry"),
        (["--workers", "a:1,a:1", "--worker-index", "1"], "'a:1' is listed twice"),
        (["--workers", "a:1,b:2", "--worker-index", "2"], "--worker-index 2 is outside 0..1"),
        (["--worker-index", "0"], "--worker-index needs --workers"),
        (
            ["--workers", "a:1,b:2", "--worker-index", "0", "--set", "train.strategy=mirrored"],
            "--workers trains with train.strategy 'multi_worker'",
        ),
        (["--set", "train.strategy=multi_worker"], "'multi_worker' needs TF_CONFIG"),
    ],
)
def test_bad_strategy_input_is_one_line(
    convdeck_home: Path, args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    line = one_line_error(run_cli("run", PRESET, *args))
    assert expected in line, line
    assert not (convdeck_home / "runs").exists() or not list((convdeck_home / "runs").iterdir())


@pytest.mark.parametrize(
    ("tf_config", "expected"),
    [
        ("{not json", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
        ('{"cluster": {"worker": []}, "task": {"type": "worker"}}', "non-empty list"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "0..0"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task.type 'ps'"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker"}}', "'ps'"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ],
)
def test_malformed_tf_config_is_one_line(
    convdeck_home: Path, tf_config: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CONFIG", tf_config)
    line = one_line_error(run_cli("run", PRESET, "--set", "train.strategy=multi_worker"))
    assert "TF_CONFIG" in line and expected in line, line
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        strategy.read_tf_config()


@pytest.fixture(scope="module")
def bad_runs() -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """Bad input only a worker finds, each a `convdeck run`, all at once (each loads TF)."""
    import shutil
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="cdk-", dir="/tmp"))
    env = {**os.environ, "CONVDECK_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    busy = socket.socket()
    busy.bind(("", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    alone, missing = free_ports(2)
    cases = {
        "no such device": [*sets(SMALL), "--set", "train.strategy=mirrored",
                           "--set", 'train.devices=["/gpu:3"]'],
        "two devices, one_device": [*sets(SMALL), "--set", "train.strategy=one_device",
                                    "--set", 'train.devices=["/cpu:0", "/cpu:1"]'],
        "unreachable worker": ["--workers", f"localhost:{alone},localhost:{missing}",
                               "--worker-index", "0", *sets(SMALL)],
        "port in use": ["--workers", f"localhost:{taken},localhost:{missing}",
                        "--worker-index", "0", *sets(SMALL)],
    }
    started = time.monotonic()
    processes = {
        name: subprocess.Popen(
            [*cli_command(), "run", PRESET, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**env, "CONVDECK_WORKER_TIMEOUT": "4"},
        )
        for name, args in cases.items()
    }
    results = {}
    try:
        for name, process in processes.items():
            out, err = process.communicate(timeout=WORKER_WAIT)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        results["seconds"] = time.monotonic() - started
        yield results
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        busy.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_mirrored_on_a_device_that_is_not_there(bad_runs: dict) -> None:
    line = one_line_error(bad_runs["no such device"])
    assert "train.devices: '/gpu:3' is not on this machine; present: CPU:0" in line


@pytest.mark.slow
def test_one_device_with_two_devices(bad_runs: dict) -> None:
    line = one_line_error(bad_runs["two devices, one_device"])
    assert "one_device takes one device" in line and "mirrored" in line


@pytest.mark.slow
def test_a_worker_that_cannot_be_reached_times_out(bad_runs: dict) -> None:
    line = one_line_error(bad_runs["unreachable worker"])
    assert "cannot reach worker 1 (localhost:" in line and "within 4 s" in line, line
    assert "CONVDECK_WORKER_TIMEOUT" in line


@pytest.mark.slow
def test_a_port_already_taken(bad_runs: dict) -> None:
    line = one_line_error(bad_runs["port in use"])
    assert "cannot be opened on this machine" in line, line


# -- TF-free pieces -------------------------------------------------------------------------


def test_workers_option_writes_tf_config() -> None:
    config = json.loads(strategy.workers_tf_config("10.0.0.1:2222, 10.0.0.2:2222", 1))
    assert config == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert strategy.read_tf_config(json.dumps(config)) == config


def test_a_chief_task_comes_first() -> None:
    config = strategy.read_tf_config(
        json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
                    "task": {"type": "worker", "index": 1}})
    )
    assert strategy.cluster_addresses(config) == (["c:1", "w:1", "w:2"], "worker", 1)


def test_workers_meet_within_the_timeout() -> None:
    ports = free_ports(2)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    errors: list[BaseException] = []
    servers: list[socket.socket] = []

    def join(index: int) -> None:
        try:
            strategy.wait_for_workers(addresses, index, timeout=20)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
            return
        # TensorFlow's server takes the port next; a late peer's check finds it.
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("", ports[index]))
        server.listen(4)
        servers.append(server)

    first = threading.Thread(target=join, args=(0,))
    first.start()
    time.sleep(0.5)  # the second worker starts later, as on another machine
    try:
        join(1)
        first.join(25)
    finally:
        for server in servers:
            server.close()
    assert not errors and not first.is_alive()


def test_a_missing_worker_is_named_after_the_timeout() -> None:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        strategy.wait_for_workers(addresses, 0, timeout=1.0)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "worker 1" in message and "worker 2" in message and "connection refused" in message
    assert "\n" not in message


def test_worker_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(strategy.WORKER_TIMEOUT_ENV, raising=False)
    assert strategy.worker_timeout() == strategy.DEFAULT_WORKER_TIMEOUT
    monkeypatch.setenv(strategy.WORKER_TIMEOUT_ENV, "12.5")
    assert strategy.worker_timeout() == 12.5
    monkeypatch.setenv(strategy.WORKER_TIMEOUT_ENV, "-1")
    with pytest.raises(ConfigError, match="expected seconds > 0"):
        strategy.worker_timeout()


def test_the_cluster_is_kept_for_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = strategy.workers_tf_config("h:1,h:2", 1)
    monkeypatch.setenv("TF_CONFIG", raw)
    strategy.remember_tf_config(tmp_path)
    monkeypatch.delenv("TF_CONFIG")
    strategy.remember_tf_config(tmp_path)  # a resume: no TF_CONFIG, the kept one returns
    assert os.environ["TF_CONFIG"] == raw


def test_non_chief_events_keep_only_its_start_and_end() -> None:
    kept: list[str] = []

    class Writer:
        def emit(self, type: str, **fields) -> dict:
            kept.append(type)
            return {"type": type}

        def close(self) -> None:
            kept.append("closed")

    events = strategy.NonChiefEvents(Writer())
    for kind in ("run_started", "step", "checkpoint", "epoch_end", "paused", "log", "finished"):
        events.emit(kind, step=1)
    events.close()
    assert kept == ["run_started", "log", "finished", "closed"]


@pytest.mark.parametrize(
    ("message", "device"),
    [
        (
            "OOM when allocating tensor with shape[256,64,112,112] and type float on "
            "/job:localhost/replica:0/task:0/device:GPU:1 by allocator GPU_1_bfc",
            "/job:localhost/replica:0/task:0/device:GPU:1",
        ),
        ("failed to allocate 2.0GiB by allocator GPU_3_bfc", "/device:GPU:3"),
        ("OOM when allocating tensor with shape[32,6,28,28]", None),
    ],
)
def test_the_oom_device_is_read_from_the_message(message: str, device: str | None) -> None:
    assert strategy.oom_device(message) == device


def test_lost_workers_message() -> None:
    class UnavailableError(Exception):
        pass

    error = UnavailableError(
        "Graph execution error:\n\nDetected at node x\n"
        "Collective ops is aborted by: Socket closed\n"
    )
    line = strategy.lost_workers_message(error)
    assert line.startswith("lost contact with another worker (Socket closed)")
    assert strategy.lost_workers_message(ValueError("x")) is None


def test_the_header_shows_the_strategy_and_replicas() -> None:
    from engine.run.facts import RunFacts
    from engine.run.protocol import RunStarted
    from tui.widgets.header import distribution

    def header_for(**started) -> str:
        return distribution(RunFacts("r").apply([RunStarted(time=0.0, **started)]))

    assert header_for(strategy="mirrored", replicas=2, workers=1) == "mirrored ×2"
    assert header_for(strategy="multi_worker", replicas=4, workers=2) == (
        "multi_worker ×4 on 2 workers"
    )
    assert header_for(strategy="one_device", replicas=1) == ""
    assert header_for() == ""  # an older run's events say nothing of it
