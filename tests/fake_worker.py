"""A TF-free stand-in for ``engine.train.worker``, for the client and CLI tests.

Run as ``python -m fake_worker RUN_DIR [--resume] [--remedy NAME]`` (tests
put this folder on PYTHONPATH and set CONVDECK_WORKER_MODULE=fake_worker),
or as ``python -m fake_worker --warm``: a warm worker (engine.run.warm_protocol)
that loads nothing (or sleeps FAKE_LOAD_SECONDS) before it waits for its run.
It keeps the worker's contract (the run's lock taken first, worker.pid,
heartbeat, events, control.sock, exit codes) in under a second, so the CLI's following, Ctrl-C and exit
codes are tested without TensorFlow. Its events go through the worker's own
writer (engine.run.events.EventWriter), so each is checked against its
declaration in engine.run.protocol. FAKE_WORKER_MODE picks the story:

- ``complete``: 2 epochs of 3 steps, each ending with a ``checkpoint``, then ``finished`` (exit 0)
- ``fail``: ``failed`` with a traceback path (exit 1)
- ``user_error``: ``failed`` with ``user_error: true`` (exit 2)
- ``crash``: a step, then SIGKILL to itself (no final event)
- ``serve``: steps every 50 ms while serving control.sock until ``stop``
  or SIGTERM, then ``checkpoint`` and ``finished`` reason ``stopped``
  (after FAKE_STOP_SECONDS, to play a slow checkpoint)
- ``stall``: 3 steps, then FAKE_STALL_SECONDS of heartbeats and no step (an
  input pipeline that hangs), then the rest of ``complete``
- ``oom_wait``: 2 steps, then an ``oom`` that waits for a remedy, heartbeating
  until SIGTERM or ``stop``
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from engine.remedies import REMEDIES, unknown_remedy
from engine.run.control import ControlServer
from engine.run.events import EventWriter, read_events
from engine.run.lock import EXIT_ALREADY_RUNNING, AlreadyRunning
from engine.run.protocol import Step
from engine.run.store import claim_run
from engine.run.warm_protocol import WARM_FLAG, await_hand_off


def _load() -> None:
    """The warm fake loads nothing, slowly when FAKE_LOAD_SECONDS says so."""
    time.sleep(float(os.environ.get("FAKE_LOAD_SECONDS", "0")))


class FakeWorker:
    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.step = self._last_step() if resume else 0
        self.stop = threading.Event()
        self.paused = False
        self.events = EventWriter(run_dir / "events.jsonl", flush_interval=0.0)

    def emit(self, type: str, **fields) -> None:
        self.events.emit(type, **fields)

    def _last_step(self) -> int:
        events = read_events(self.run_dir / "events.jsonl")
        return max((e.step for e in events if isinstance(e, Step) and e.step), default=0)

    def start(self) -> None:
        self.emit(
            "run_started",
            run_id=self.run_dir.name,
            pid=os.getpid(),
            devices=["CPU:0"],
            config={"name": "fake"},
            steps_per_epoch=3,
            epochs=2,
            resumed_from_step=self.step if self.resume else None,
        )

    def train_step(self, epoch: int) -> None:
        self.step += 1
        self.emit(
            "step",
            step=self.step,
            epoch=epoch,
            loss=1.0 / self.step,
            accuracy=0.5,
            learning_rate=1e-3,
            images_per_sec=1000.0,
            step_time=0.01,
        )


def complete(worker: FakeWorker) -> int:
    for epoch in (1, 2):
        for _ in range(3):
            worker.train_step(epoch)
        worker.emit(
            "epoch_end",
            epoch=epoch,
            step=worker.step,
            loss=0.2,
            accuracy=0.9,
            val_loss=0.25,
            val_accuracy=0.875 + epoch / 100,
        )
        worker.emit("checkpoint", step=worker.step, path=f"checkpoints/ckpt-{worker.step}")
    worker.emit(
        "finished",
        reason="completed",
        loss=0.2,
        accuracy=0.9,
        val_loss=0.25,
        val_accuracy=0.895,
        best_val_accuracy=0.895,
        steps=worker.step,
        elapsed=1.5,
    )
    return 0


def fail(worker: FakeWorker) -> int:
    path = worker.run_dir / "traceback.txt"
    path.write_text("Traceback: boom\n")
    worker.emit("failed", error="RuntimeError: boom", traceback_path=str(path))
    return 1


def user_error(worker: FakeWorker) -> int:
    worker.emit(
        "failed",
        error="model.arch: image size 8x8 is below lenet5's minimum 28x28",
        user_error=True,
    )
    return 2


def crash(worker: FakeWorker) -> int:
    worker.train_step(1)
    print("about to die", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def serve(worker: FakeWorker) -> int:
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    # The real server: what reaches the socket is handled as in a real worker.
    server = ControlServer(worker.run_dir / "control.sock", lambda request: _reply(worker, request))
    server.start()
    while not worker.stop.is_set():
        if not worker.paused:
            worker.train_step(1 + worker.step // 3)
        time.sleep(0.05)
        (worker.run_dir / "heartbeat").touch()
    time.sleep(float(os.environ.get("FAKE_STOP_SECONDS", "0")))
    worker.emit("checkpoint", step=worker.step, path=str(_save_checkpoint(worker)))
    worker.emit(
        "finished", reason="stopped", loss=0.3, accuracy=0.8, steps=worker.step, elapsed=1.0
    )
    server.close()
    return 0


def _save_checkpoint(worker: FakeWorker) -> Path:
    """A checkpoint's files by name: what `resume` checks before spawning (it reads no contents)."""
    prefix = worker.run_dir / "checkpoints" / f"ckpt-{worker.step}"
    prefix.parent.mkdir(exist_ok=True)
    for suffix in (".index", ".data-00000-of-00001"):
        Path(f"{prefix}{suffix}").write_bytes(b"")
    return prefix


def _reply(worker: FakeWorker, request: dict) -> dict:
    command = request.get("command")
    if command == "stop":
        worker.stop.set()
    elif command in ("pause", "resume"):
        worker.paused = command == "pause"
    elif command == "status":
        return {
            "ok": True,
            "state": "paused" if worker.paused else "running",
            "step": worker.step,
            "epoch": 1 + worker.step // 3,
        }
    elif command != "remedy":
        return {"ok": False, "error": f"unknown command {command!r}"}
    elif request.get("name") not in REMEDIES:  # the worker's own check, from the catalogue
        return {"ok": False, "error": unknown_remedy(request.get("name"))}
    return {"ok": True, "command": command, **request}


def _heartbeat_for(worker: FakeWorker, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not worker.stop.is_set():
        (worker.run_dir / "heartbeat").touch()
        time.sleep(0.1)


def stall(worker: FakeWorker) -> int:
    for _ in range(3):
        worker.train_step(1)
        time.sleep(0.05)
    _heartbeat_for(worker, float(os.environ.get("FAKE_STALL_SECONDS", "5")))
    return complete(worker)  # the steps come again, numbered on


def oom_wait(worker: FakeWorker) -> int:
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    worker.train_step(1)
    worker.train_step(1)
    worker.emit(
        "oom",
        step=worker.step + 1,
        batch_size=256,
        message="OOM when allocating tensor with shape[256,64,112,112]",
        remedies=[{"name": "halve-batch", "key": "h", "title": "halve the batch size", "effect": "batch 256 -> 128"}],
        policy="ask",
        waiting=True,
    )
    _heartbeat_for(worker, 600.0)
    worker.emit("finished", reason="stopped", steps=worker.step, elapsed=1.0)
    return 0


MODES = {
    "complete": complete,
    "fail": fail,
    "user_error": user_error,
    "crash": crash,
    "serve": serve,
    "stall": stall,
    "oom_wait": oom_wait,
}


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == [WARM_FLAG]:  # the warm pair's protocol, with nothing to load
        argv = await_hand_off(_load)
        if argv is None:
            return 0
    run_dir = Path(argv[0]).resolve()
    try:
        run_lock = claim_run(run_dir)  # the lock, then worker.pid and a heartbeat, as the worker
    except AlreadyRunning as busy:
        print(f"fake worker: {busy}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    (run_dir / "control.sock").unlink(missing_ok=True)  # with the lock held it can only be stale
    worker = FakeWorker(run_dir, resume="--resume" in argv)
    worker.run_lock = run_lock  # held for the process's life
    worker.start()
    return MODES[os.environ.get("FAKE_WORKER_MODE", "complete")](worker)


if __name__ == "__main__":
    sys.exit(main())
