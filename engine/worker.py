"""The worker process: ``python -m engine.worker RUN_DIR [--resume]``.

It trains what RUN_DIR/config.toml describes, appends events, serves
control.sock, and keeps its pid and a heartbeat in the run directory so
viewers can tell a live run from a dead one. It is started in a session of
its own and ignores SIGHUP, so a dropped ssh link never reaches it. SIGTERM
and SIGINT mean ``stop``: checkpoint, final event, exit 0. An exception
becomes a ``failed`` event with the traceback saved in the run directory.

Exit codes: 0 finished or stopped, 1 failed, 2 the config is a user error.
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
from engine.control import ControlServer, ControlState  # noqa: E402
from engine.events import EVENTS_FILE, EventWriter  # noqa: E402
from engine.runs import HEARTBEAT_FILE, PID_FILE, SOCKET_FILE, read_config  # noqa: E402

HEARTBEAT_SECONDS = 2.0
TRACEBACK_FILE = "traceback.txt"


def write_pid_file(run_dir: Path) -> None:
    """Record pid and start time; the start time guards against a reused pid."""
    import psutil

    started = psutil.Process().create_time()
    tmp = run_dir / (PID_FILE + ".tmp")
    tmp.write_text(f"{os.getpid()} {started}")
    os.replace(tmp, run_dir / PID_FILE)


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
    """One run's process: wires events, control and the trainer together."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.events = EventWriter(run_dir / EVENTS_FILE)
        self.control = ControlState()
        self.server = ControlServer(run_dir / SOCKET_FILE, self.handle_command)
        self.trainer = None

    def handle_command(self, request: dict) -> dict:
        reply = self.control.request(request["command"], request.get("name"))
        if reply.get("ok") and request["command"] not in ("status",):
            self.events.emit("log", level="info", message=f"command: {_describe(request)}")
        return reply

    def run(self) -> int:
        write_pid_file(self.run_dir)
        start_heartbeat(self.run_dir)
        install_signal_handlers(self.control)
        self.server.start()
        try:
            return self._train()
        except ConfigError as error:
            self.events.emit("failed", error=str(error), user_error=True)
            return 2
        except Exception as error:  # anything else is a crash worth a traceback
            return self._fail(error)
        finally:
            self.server.close()
            self.events.close()

    def _train(self) -> int:
        from engine.faults import parse_faults
        from engine.trainer import OutOfMemory, Trainer

        config = read_config(self.run_dir)
        self.trainer = Trainer(config, self.run_dir, self.events, self.control, parse_faults())
        self.trainer.setup(resume=self.resume)
        try:
            self.trainer.run()
        except OutOfMemory as oom:
            return self._out_of_memory(oom)
        return 0

    def _out_of_memory(self, oom) -> int:
        self.events.emit(
            "oom", step=oom.step, batch_size=oom.batch_size, message=oom.message, remedies=[], waiting=False
        )
        self.events.emit(
            "failed",
            error=f"out of memory at step {oom.step} with batch {oom.batch_size}: {oom.message}",
        )
        return 1

    def _fail(self, error: BaseException) -> int:
        path = self.run_dir / TRACEBACK_FILE
        path.write_text(traceback.format_exc())
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        line = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        self.events.emit("failed", error=line, traceback_path=str(path))
        return 1


def _describe(request: dict) -> str:
    return " ".join(str(request[k]) for k in ("command", "name") if request.get(k))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--remedy", help="apply this remedy before resuming")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # checkpoint saves log at INFO per shard
    return Worker(args.run_dir.resolve(), resume=args.resume).run()


if __name__ == "__main__":
    sys.exit(main())
