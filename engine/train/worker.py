"""The worker process: ``python -m engine.train.worker RUN_DIR [--resume [--from-scratch]]``.

(``python -m engine.train.worker --warm``: a warm worker, which loads TensorFlow
before its run is known and reads RUN_DIR and the rest from stdin, then runs
as above: :mod:`engine.run.warm_protocol`.)

It trains what RUN_DIR/config.toml describes, appends events, serves
control.sock, and keeps its pid and a heartbeat in the run directory so
viewers can tell a live run from a dead one. Before anything else it takes
the run's lock (:mod:`engine.run.lock`) and holds it for its whole life, a
remedy's re-exec included: a second worker on the same run exits at once
without writing anything. It is started in a session of
its own and ignores SIGHUP, so a dropped ssh link never reaches it. SIGTERM
and SIGINT mean ``stop``: checkpoint, final event, exit 0. An exception
becomes a ``failed`` event with the traceback saved in the run directory.
A run that finishes is evaluated with its trained model before its
``finished`` event (eval.json and an ``eval`` event), as ``ctl RUN eval``
evaluates the current weights mid-run; an evaluation that fails is a log
line, never a failed run.

Exit codes: 0 finished or stopped, 1 failed, 2 the config is a user error,
75 (:data:`engine.run.lock.EXIT_ALREADY_RUNNING`) another worker owns the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from engine.config import ConfigError  # noqa: E402
from engine.remedies import REMEDIES, applicable_remedies, apply_remedy, blocker, changes_weights  # noqa: E402
from engine.run.control import ControlServer, ControlState  # noqa: E402
from engine.run.events import EVENTS_FILE, EventWriter  # noqa: E402
from engine.run.lock import EXIT_ALREADY_RUNNING, AlreadyRunning, RunLock  # noqa: E402
from engine.run.store import (  # noqa: E402
    HEARTBEAT_FILE,
    SOCKET_FILE,
    WORKER_LOG,
    claim_run,
    read_config,
    read_config_revisions,
    write_config,
)
from engine.run.warm_protocol import WARM_FLAG, await_hand_off  # noqa: E402

HEARTBEAT_SECONDS = 2.0
TRACEBACK_FILE = "traceback.txt"
FAULTS_FIRED_FILE = ".faults-fired"


def start_heartbeat(run_dir: Path) -> None:
    """Touch the heartbeat file every few seconds from a daemon thread."""
    path = run_dir / HEARTBEAT_FILE

    def beat() -> None:
        while True:
            path.touch()
            time.sleep(HEARTBEAT_SECONDS)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def install_signal_handlers(control: ControlState) -> None:
    # The terminal going away must not end the run; only an explicit signal does.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: control.request("stop"))


class Worker:
    """One run's process: wires events, control and the trainer together.

    Args:
        run_dir: the run directory.
        run_lock: the run's lock, already taken (:func:`engine.run.store.claim_run`):
            only its holder may open the events or replace the control socket.
        resume: continue from the newest checkpoint.
        remedy: a remedy to apply first.
        from_scratch: start again from step 0, moving the old checkpoints aside.
    """

    def __init__(
        self,
        run_dir: Path,
        run_lock: RunLock,
        resume: bool = False,
        remedy: str | None = None,
        from_scratch: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.run_lock = run_lock
        self.resume = resume
        self.remedy = remedy
        self.from_scratch = from_scratch
        self.progress_from: str | None = None
        self.restart_with: str | None = None
        self.events = EventWriter(run_dir / EVENTS_FILE)
        self.control = ControlState()
        self.server = ControlServer(run_dir / SOCKET_FILE, self.handle_command)
        self.trainer = None
        self.trained: tuple | None = None
        """(config, replicas) once the trainer is set up: what a remedy asked for would change."""
        self.control.remedy_blocker = self._remedy_blocker

    def _remedy_blocker(self, name: str) -> str | None:
        """Why the control socket refuses remedy ``name`` now, or None: asked for, it would end the run."""
        if self.trained is None:  # the replicas a halved batch must split over are not known yet
            return "the worker is still starting; ask again once it trains"
        config, replicas = self.trained
        return blocker(name, config, replicas)

    def handle_command(self, request: dict) -> dict:
        if request["command"] == "stacks":
            return {"ok": True, "stacks": dump_stacks(self.run_dir)}
        reply = self.control.request(request["command"], request.get("name"))
        if reply.get("ok") and request["command"] not in ("status",):
            self.events.emit("log", level="info", message=f"command: {_describe(request)}")
        return reply

    def run(self, stop_already_asked: bool = False) -> int:
        start_heartbeat(self.run_dir)
        install_signal_handlers(self.control)
        if stop_already_asked:
            self.control.request("stop")
        self.server.start()
        try:
            code = self._train()
        except ConfigError as error:
            self.events.emit("failed", error=str(error), user_error=True)
            code = 2
        except Exception as error:  # anything else is a crash worth a traceback
            code = self._fail(error)
        finally:
            self.server.close()
            self.events.close()
        if self.restart_with:
            self._restart(self.restart_with)
        return code

    def _train(self) -> int:
        from engine.train.faults import parse_faults
        from engine.train.memory import free_gpu_bytes, warn_if_memory_short
        from engine.train.trainer import ApplyRemedy, OutOfMemory, Trainer

        # TensorFlow took most of the start; say so, so a front end can tell what the rest is.
        self.events.emit("building")
        # NVML's free memory before TensorFlow starts on the GPU and takes some.
        free_before = free_gpu_bytes()

        if self.from_scratch:
            self._set_checkpoints_aside_for_scratch()
        elif self.resume:
            from engine.train.checkpoints import recover_checkpoints

            recover_checkpoints(self.run_dir, self.events)  # before anything reads checkpoints/
        if self.remedy:
            self._apply_remedy(self.remedy)
        config = read_config(self.run_dir)
        if config.train.strategy == "multi_worker":
            from engine.train.strategy import remember_tf_config

            remember_tf_config(self.run_dir)  # so `convdeck resume` rejoins the same cluster
        faults = parse_faults(fired_path=self.run_dir / FAULTS_FIRED_FILE)
        # A run that finished is evaluated in place, with its trained model: eval.json and an eval event.
        self.trainer = Trainer(config, self.run_dir, self.events, self.control, faults, evaluate_at_end=True)
        self.trainer.setup(resume=self.resume, progress_from=self.progress_from)
        self.trained = (config, self.trainer.dist.replicas)
        warn_if_memory_short(self.trainer, free_before, self.events)
        if self.trainer.dist.multi_worker:
            # MultiWorkerMirroredStrategy's runtime takes SIGTERM for itself: take it back.
            install_signal_handlers(self.control)
        try:
            self.trainer.run()
        except OutOfMemory as oom:
            return self._out_of_memory(oom, config)
        except ApplyRemedy as asked:
            self._restart_with(asked.name, config)
        return 0

    # ----- out of memory and remedies ---------------------------------------

    def _out_of_memory(self, oom, config) -> int:
        from engine.train.strategy import oom_device

        # A worker of several cannot save alone (a save is collective) nor change in place.
        multi_worker = self.trainer.dist.multi_worker
        if not multi_worker:
            # The failed step changed no weight: what the model holds is the last good state.
            self.trainer.save_checkpoint()
        policy = config.train.on_oom
        replicas = self.trainer.dist.replicas
        remedies = applicable_remedies(config, replicas)
        self.events.emit(
            "oom",
            step=oom.step,
            batch_size=oom.batch_size,
            message=oom.message,
            device=oom_device(oom.message),
            memory=_device_memory(),
            remedies=remedies,
            policy=policy,
            waiting=policy == "ask" and bool(remedies) and not multi_worker,
        )
        if multi_worker:
            how = (
                f"stop every worker and resume each with `convdeck resume RUN --remedy "
                f"{remedies[0]['name']}`" if remedies else "no remedy applies"
            )
            device = oom_device(oom.message) or "a device"
            self.events.emit(
                "failed",
                error=f"out of memory at step {oom.step} on {device} with batch "
                f"{oom.batch_size}: a multi-worker run cannot change in place; {how}",
            )
            return 1
        wanted = policy if policy in REMEDIES else None  # a remedy's name: apply it unattended
        if policy == "ask" and remedies:
            wanted = self._wait_for_remedy()
            if wanted is None:
                self.trainer.finish(self.control.stop_reason)
                return 0
        if wanted and any(r["name"] == wanted for r in remedies):
            self._restart_with(wanted, config)
            return 0
        return self._give_up_on_oom(oom, config, remedies, wanted)

    def _wait_for_remedy(self) -> str | None:
        """Block until a ``remedy`` command (its name) or ``stop`` (None)."""
        self.control.waiting_for_remedy = True
        self.control.status = {**self.control.status, "state": "waiting"}
        while not self.control.stop_requested:
            remedy = self.control.take_remedy()
            if remedy:
                return remedy
            self.control.wait_while_paused()
        return None

    def _give_up_on_oom(self, oom, config, remedies: list[dict], wanted: str | None) -> int:
        replicas = self.trainer.dist.replicas
        if not remedies:
            reasons = "; ".join(f"{name}: {blocker(name, config, replicas)}" for name in REMEDIES)
            advice = f"no remedy applies ({reasons})"
        elif wanted is None:
            advice = f"train.on_oom is 'stop'; resume with --remedy {remedies[0]['name']}"
        else:
            advice = f"remedy {wanted!r} cannot apply: {blocker(wanted, config, replicas)}"
        self.events.emit(
            "failed", error=f"out of memory at step {oom.step} with batch {oom.batch_size}: {advice}"
        )
        return 1

    def _restart_with(self, name: str, config) -> None:
        """Checkpoint now; after cleanup, the process replaces itself with the remedy applied."""
        apply_remedy(name, config, self.trainer.dist.replicas)  # one that cannot apply fails here, before any change
        self.trainer.save_checkpoint()
        self.events.emit(
            "log",
            level="info",
            message=f"applying remedy {name}: restarting the worker",
            restarting=name,  # what viewers read; the message is for people
        )
        self.restart_with = name

    def _restart(self, name: str) -> None:
        # exec keeps the pid (viewers and worker.pid stay valid) while the
        # new image starts with a fresh TensorFlow, so GPU memory is released.
        # The lock goes across with its descriptor, never released: no other worker can slip in.
        args = [sys.executable, "-m", "engine.train.worker", str(self.run_dir), "--resume", "--remedy", name]
        self.run_lock.keep_across_exec()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, args)

    def _apply_remedy(self, name: str) -> None:
        """Write the remedy's config revision and note where progress continues from."""
        config = read_config(self.run_dir)
        new_config, changes = apply_remedy(name, config)
        revisions = read_config_revisions(self.run_dir)
        number = len(revisions) + 1
        step = _latest_step(self.run_dir / "checkpoints")
        if changes_weights(name):
            self.progress_from = _set_checkpoints_aside(self.run_dir, number)
        revisions.append({"revision": number, "remedy": name, "step": step or 0, "changes": changes})
        write_config(self.run_dir, new_config, revisions)
        self.events.emit(
            "remedy_applied", name=name, revision=number, step=step or 0, changes=changes,
            fresh_model=changes_weights(name),
        )
        self.resume = True

    def _set_checkpoints_aside_for_scratch(self) -> None:
        from engine.run.checkpoint_files import set_aside_for_scratch

        aside = set_aside_for_scratch(self.run_dir)
        kept = f"; the old checkpoints are in {aside}" if aside else ""
        self.events.emit("log", level="warning", message=f"starting again from step 0{kept}")
        self.resume = False

    def _fail(self, error: BaseException) -> int:
        path = self.run_dir / TRACEBACK_FILE
        path.write_text(traceback.format_exc())
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        line = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        dist = getattr(self.trainer, "dist", None)
        if dist is not None and dist.multi_worker:
            from engine.train.strategy import lost_workers_message

            line = lost_workers_message(error) or line
        self.events.emit("failed", error=line, traceback_path=str(path))
        return 1


def _device_memory() -> dict:
    """Bytes in use and peak per GPU, where TensorFlow can tell."""
    import tensorflow as tf

    memory = {}
    for device in tf.config.list_logical_devices("GPU"):
        try:
            memory[device.name] = tf.config.experimental.get_memory_info(device.name)
        except (ValueError, tf.errors.OpError):
            continue
    return memory


def _latest_step(directory: Path) -> int | None:
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(directory))
    return int(path.rsplit("-", 1)[1]) if path else None


def _set_checkpoints_aside(run_dir: Path, revision: int) -> str | None:
    """Move an old model's checkpoints aside; returns its latest, for the step and data position."""
    import tensorflow as tf

    old = run_dir / "checkpoints"
    aside = run_dir / f"checkpoints.rev{revision - 1}"
    latest = tf.train.latest_checkpoint(str(old))
    os.replace(old, aside)
    old.mkdir()
    return latest.replace(str(old), str(aside)) if latest else None


def dump_stacks(run_dir: Path) -> str:
    """Every thread's Python stack, appended to worker.log and returned: where a stalled run waits.

    faulthandler writes from C without taking the GIL's usual paths, so it
    answers even while the training thread is stuck inside TensorFlow.
    """
    import faulthandler
    import tempfile

    with tempfile.TemporaryFile("w+") as scratch:
        faulthandler.dump_traceback(file=scratch, all_threads=True)
        scratch.seek(0)
        text = scratch.read()
    with open(run_dir / WORKER_LOG, "a") as log:
        log.write(f"--- stacks at {time.strftime('%Y-%m-%d %H:%M:%S')} (convdeck ctl stacks) ---\n{text}")
    return text


def _describe(request: dict) -> str:
    return " ".join(str(request[k]) for k in ("command", "name") if request.get(k))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [WARM_FLAG]:
        from engine.train.preload import load_for_training

        argv = await_hand_off(load_for_training)
        if argv is None:
            return 0  # never handed a run: nothing was touched
    # A stop asked for while TensorFlow still imports must not kill the worker
    # without its final event: remember it until the real handlers are in place.
    early_stop: list[int] = []
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: early_stop.append(number))
    parser = argparse.ArgumentParser(prog="python -m engine.train.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--remedy", help="apply this remedy before resuming")
    parser.add_argument(
        "--from-scratch", action="store_true", help="with --resume: start from step 0, checkpoints set aside"
    )
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    try:
        run_lock = claim_run(run_dir)  # first: nothing touches the run before its lock is ours
    except AlreadyRunning as busy:
        print(f"convdeck worker: {busy}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # checkpoint saves log at INFO per shard
    worker = Worker(run_dir, run_lock, resume=args.resume, remedy=args.remedy, from_scratch=args.from_scratch)
    return worker.run(stop_already_asked=bool(early_stop))


if __name__ == "__main__":
    sys.exit(main())
