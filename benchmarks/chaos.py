"""Chaos: kill a run's worker at random moments with random signals, resume, check nothing is lost.

One run of LeNet-5 on the digits (small: 28x28, a checkpoint every 20 steps)
goes through N cycles of:

1. start it (``convdeck run --detach``), or resume it (``convdeck resume --detach``);
2. wait a random moment (seeded): a time since the worker was spawned, which
   may fall while it imports TensorFlow or restores its checkpoint, or a
   number of steps into its training plus a fraction of a second;
3. send the worker SIGKILL, SIGTERM or SIGINT (seeded choice) and wait until it is gone;
4. check the run on disk: every line of events.jsonl parses but at most one
   torn last line, config.toml reads and validates, ``runs`` shows a status
   that fits the signal (crashed after SIGKILL, stopped after a handled
   SIGTERM or SIGINT), and the latest checkpoint on disk is the one the next
   worker restores (its ``run_started`` names it, its first step follows it).

At the end the run is resumed once more and must finish with every step of
every epoch. Per cycle it prints the signal, the step at the kill, the last
checkpoint, and the steps the next worker redid (bounded by the checkpoint
interval); then the cycles survived, the most steps redone, and any run lost
or corrupt. Goal (issue 3, item 6): every cycle survives, nothing corrupt.

Usage: python benchmarks/chaos.py [--cycles 8] [--seed 1] [--checkpoint-every 20]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.config import ConfigError  # noqa: E402
from engine.run.events import parse_line  # noqa: E402
from engine.run.protocol import to_dict  # noqa: E402
from engine.run.store import read_config, summarize_run  # noqa: E402

STEPS_PER_EPOCH = 44  # 1,437 training digits at batch 32
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
DEADLINE = 300.0  # seconds for any one wait; the machine may be loaded


def convdeck() -> list[str]:
    script = Path(sys.executable).parent / "convdeck"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui.cli"]


@dataclass
class Cycle:
    number: int
    signal: str
    moment: str  # how the random moment was chosen
    spawned_at_offset: int = 0
    resumed_from: int | None = None  # this worker's run_started.resumed_from_step
    started: bool = False  # this worker wrote run_started before it was killed
    first_step_ok: bool | None = None
    step_at_kill: int = 0
    checkpoint_after: int | None = None
    status_after: str = ""
    exit_seconds: float = 0.0
    graceful: bool = False  # wrote a final event (stopped) before exiting
    redone: int | None = None  # steps the next worker did again
    reported: str = ""  # the supervisor's worker_exit: the signal it saw
    problems: list[str] = field(default_factory=list)


class Run:
    """The run under test: its directory, its events, and its worker."""

    def __init__(self, home: Path, args: argparse.Namespace) -> None:
        self.home = home
        self.args = args
        self.run_id = ""
        self.run_dir = Path()
        self.known_bad_lines = 0  # torn lines of earlier kills, mended by the next writer

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def cli(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*convdeck(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CONVDECK_HOME": str(self.home)},
        )

    def start(self) -> subprocess.CompletedProcess:
        overrides = [
            f"train.epochs={self.args.epochs}",
            "data.image_size=[28, 28]",
            f"train.checkpoint_every={self.args.checkpoint_every}",
            "train.on_nan=stop",
        ]
        result = self.cli("run", "lenet5-digits", "--detach", *(f"--set={o}" for o in overrides))
        if result.returncode == 0:
            self.run_id = result.stdout.strip().splitlines()[-1].split()[-1]
            self.run_dir = self.home / "runs" / self.run_id
        return result

    def resume(self) -> subprocess.CompletedProcess:
        return self.cli("resume", self.run_id, "--detach")

    def size(self) -> int:
        try:
            return self.events_path.stat().st_size
        except FileNotFoundError:
            return 0

    def events(self, offset: int = 0) -> tuple[list[dict], list[int]]:
        """The events from ``offset``, and the line numbers of torn or garbage lines."""
        try:
            with open(self.events_path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], []
        events, bad = [], []
        lines = [line for line in data.split(b"\n") if line.strip()]
        for number, line in enumerate(lines):
            event = parse_line(line)
            if event is None:
                bad.append(number)
            else:
                events.append(to_dict(event))  # plain data: this script reads fields by name
        return events, bad

    def worker_pid(self) -> int | None:
        try:
            return int((self.run_dir / "worker.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def checkpoint_on_disk(self) -> int | None:
        try:
            text = (self.run_dir / "checkpoints" / "checkpoint").read_text()
        except FileNotFoundError:
            return None
        found = re.search(r'^model_checkpoint_path: "(?:.*/)?ckpt-(\d+)"', text, re.M)
        return int(found.group(1)) if found else None


def steps_of(events: list[dict]) -> list[int]:
    numbers: list[int] = []
    for event in events:
        if event["type"] == "step":
            value = event["step"]
            numbers.extend(value if isinstance(value, list) else [value])
    return numbers


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def supervisor_of(pid: int) -> int | None:
    """The worker's parent when it is engine.run.supervisor (it appends ``worker_exit``)."""
    try:
        parent = psutil.Process(pid).parent()
        if parent is not None and "engine.run.supervisor" in " ".join(parent.cmdline()):
            return parent.pid
    except psutil.Error:
        pass
    return None


def wait_gone(pid: int, timeout: float = DEADLINE) -> float:
    started = time.monotonic()
    while alive(pid):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"worker {pid} still runs {timeout:g} s after the signal")
        time.sleep(0.02)
    return time.monotonic() - started


# -- one cycle ---------------------------------------------------------------------------------


def random_moment(rng: random.Random, args: argparse.Namespace) -> tuple[str, float, int]:
    """('time', seconds since spawn, 0) or ('steps', extra seconds, steps into training)."""
    if rng.random() < args.startup_share:
        return "time", rng.uniform(0.5, args.startup_seconds), 0
    return "steps", rng.uniform(0.0, 0.5), rng.randint(1, 2 * args.checkpoint_every + 5)


def wait_for_moment(
    run: Run, cycle: Cycle, spawned: float, kind: str, seconds: float, steps: int
) -> bool:
    """Wait for the moment; False if the run finished first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        events, _ = run.events(cycle.spawned_at_offset)
        if any(e["type"] in ("finished", "failed") for e in events):
            return False
        if kind == "time" and time.monotonic() - spawned >= seconds:
            return True
        if kind == "steps" and len(steps_of(events)) >= steps:
            time.sleep(seconds)  # the random fraction of a second, part of the moment itself
            return True
        time.sleep(0.02)
    raise TimeoutError(f"cycle {cycle.number}: no {steps} steps within {DEADLINE:g} s")


def check_disk(run: Run, cycle: Cycle) -> None:
    """events.jsonl, config.toml, status and checkpoint after the kill."""
    _, bad = run.events()
    all_lines = [line for line in run.events_path.read_bytes().split(b"\n") if line.strip()]
    new_bad = len(bad) - run.known_bad_lines
    if new_bad > 1 or (new_bad == 1 and bad[-1] != len(all_lines) - 1):
        cycle.problems.append(
            f"events.jsonl: {new_bad} new unreadable lines, not only a torn last one"
        )
    run.known_bad_lines = len(bad)
    try:
        read_config(run.run_dir)
    except ConfigError as error:
        cycle.problems.append(f"config.toml unreadable: {error}")
    segment, _ = run.events(cycle.spawned_at_offset)
    cycle.graceful = any(e["type"] == "finished" for e in segment)
    cycle.status_after = summarize_run(run.run_dir).status
    expected = "stopped" if cycle.graceful else "crashed"
    if cycle.status_after != expected:
        cycle.problems.append(f"`runs` says {cycle.status_after}, expected {expected}")
    if cycle.signal == "SIGKILL" and cycle.graceful:
        cycle.problems.append("a final event after SIGKILL?")
    exits = [e for e in segment if e["type"] == "worker_exit"]
    cycle.reported = ",".join(str(e.get("signal") or e.get("returncode")) for e in exits) or "-"
    if not cycle.graceful and not exits:
        cycle.problems.append("the worker died without a final event, and no worker_exit says how")
    if cycle.signal != "SIGKILL" and cycle.started and not cycle.graceful:
        # Its handlers were installed before run_started: it should have stopped cleanly.
        cycle.problems.append(f"{cycle.signal} after run_started, yet no final event")
    everything, _ = run.events()
    cycle.step_at_kill = max(steps_of(everything), default=0)
    cycle.checkpoint_after = run.checkpoint_on_disk()
    if cycle.graceful and cycle.started and cycle.checkpoint_after != cycle.step_at_kill:
        cycle.problems.append(
            f"stopped at step {cycle.step_at_kill} but the checkpoint is {cycle.checkpoint_after}"
        )


def note_start(
    run: Run, cycle: Cycle, checkpoint_before: int | None, awaiting: list[Cycle]
) -> None:
    """Fill in what this worker's run_started says: where it resumed, and the steps it redid.

    ``awaiting`` are the kills since the last worker that got as far as
    run_started; the steps each of them costs are known now.
    """
    segment, _ = run.events(cycle.spawned_at_offset)
    starts = [e for e in segment if e["type"] == "run_started"]
    if not starts:
        return
    cycle.started = True
    cycle.resumed_from = starts[0].get("resumed_from_step") or 0
    if cycle.resumed_from != (checkpoint_before or 0):
        cycle.problems.append(
            f"resumed from step {cycle.resumed_from}, "
            f"but the latest checkpoint was {checkpoint_before}"
        )
    steps = steps_of(segment)
    if steps:
        expected = list(range(cycle.resumed_from + 1, cycle.resumed_from + 1 + len(steps)))
        cycle.first_step_ok = steps == expected
        if not cycle.first_step_ok:
            cycle.problems.append(
                f"steps after resuming from {cycle.resumed_from} are {steps[:5]}..."
            )
    for killed in awaiting:
        killed.redone = killed.step_at_kill - cycle.resumed_from
    awaiting.clear()


def run_cycle(
    run: Run, cycle: Cycle, rng_moment: tuple[str, float, int], awaiting: list[Cycle]
) -> bool:
    """One spawn-wait-kill-check; False when the run finished before the kill."""
    checkpoint_before = run.checkpoint_on_disk()
    cycle.spawned_at_offset = run.size()
    spawned = time.monotonic()
    result = run.start() if cycle.number == 1 else run.resume()
    if result.returncode != 0:
        cycle.problems.append(
            f"could not {'start' if cycle.number == 1 else 'resume'}: {result.stderr.strip()}"
        )
        return False
    kind, seconds, steps = rng_moment
    if not wait_for_moment(run, cycle, spawned, kind, seconds, steps):
        note_start(run, cycle, checkpoint_before, awaiting)
        return False
    pid = run.worker_pid()
    supervisor = supervisor_of(pid)
    os.kill(pid, SIGNALS[cycle.signal])
    cycle.exit_seconds = wait_gone(pid)
    if supervisor is not None:
        wait_gone(supervisor)  # it reports a death by signal (worker_exit), then ends
    note_start(run, cycle, checkpoint_before, awaiting)
    check_disk(run, cycle)
    awaiting.append(cycle)
    return True


def finish(run: Run, awaiting: list[Cycle], ended_from: int | None) -> tuple[Cycle, list[dict]]:
    """Resume once more and let the run end; check every step of every epoch was trained.

    ``ended_from``: the run already finished before the last cycle's kill
    came; it is checked as it is, from that cycle's events on.
    """
    final = Cycle(number=0, signal="-", moment="to the end" if ended_from is None else "ended first")
    checkpoint_before = run.checkpoint_on_disk()
    if ended_from is not None:
        final.spawned_at_offset = ended_from
    else:
        final.spawned_at_offset = run.size()
        result = run.resume()
        if result.returncode != 0:
            final.problems.append(f"the last resume failed: {result.stderr.strip()}")
            return final, []
    deadline = time.monotonic() + 2 * DEADLINE
    while True:
        segment, _ = run.events(final.spawned_at_offset)
        if any(e["type"] in ("finished", "failed") for e in segment):
            break
        if time.monotonic() > deadline:
            final.problems.append("the run did not finish in time")
            break
        time.sleep(0.1)
    pid = run.worker_pid()
    if pid:
        wait_gone(pid)
    if ended_from is None:
        note_start(run, final, checkpoint_before, awaiting)
    events, bad = run.events()
    end = segment[-1] if segment else {}
    total = run.args.epochs * STEPS_PER_EPOCH
    if end.get("type") != "finished" or end.get("reason") != "completed":
        final.problems.append(f"the run ended with {end}")
    elif end.get("steps") != total:
        final.problems.append(f"finished at step {end.get('steps')}, expected {total}")
    covered = set(steps_of(events))
    if covered != set(range(1, total + 1)):
        final.problems.append(
            f"steps never trained: {sorted(set(range(1, total + 1)) - covered)[:10]}"
        )
    epochs_ended = sorted({e["epoch"] for e in events if e["type"] == "epoch_end"})
    if epochs_ended != list(range(1, run.args.epochs + 1)):
        final.problems.append(f"epochs ended: {epochs_ended}")
    if len(bad) > run.known_bad_lines:
        final.problems.append(f"{len(bad) - run.known_bad_lines} unreadable lines appeared")
    status = summarize_run(run.run_dir).status
    if status != "finished":
        final.problems.append(f"`runs` says {status}")
    final.step_at_kill = max(covered, default=0)
    final.checkpoint_after = run.checkpoint_on_disk()
    final.status_after = status
    return final, events


# -- the report -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument(
        "--epochs", type=int, default=0, help="default: enough that the kills come before the end"
    )
    parser.add_argument(
        "--startup-share", type=float, default=0.25,
        help="share of kills timed from the spawn (may land in start-up or restore)",
    )  # fmt: skip
    parser.add_argument("--startup-seconds", type=float, default=12.0)
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args()
    if not args.epochs:
        # The most steps a cycle can advance: a kill by step count, or by time since
        # spawn at up to ~40 steps a second of this machine's LeNet-5, and a margin.
        per_cycle = max(2 * args.checkpoint_every + 30, round(40 * args.startup_seconds))
        args.epochs = max(4, math.ceil(args.cycles * per_cycle / STEPS_PER_EPOCH) + 2)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"lenet5-digits 28x28, {args.epochs} epochs x {STEPS_PER_EPOCH} steps, "
        f"checkpoint every {args.checkpoint_every} steps and at each epoch's end, seed {args.seed}",
        flush=True,
    )
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="cdk-chaos-", dir="/tmp"))
    run = Run(home, args)
    cycles: list[Cycle] = []
    began = time.monotonic()
    lost = False
    try:
        awaiting: list[Cycle] = []
        for number in range(1, args.cycles + 1):
            name = rng.choice(list(SIGNALS))
            kind, seconds, steps = moment = random_moment(rng, args)
            described = (
                f"{seconds:.1f} s after spawn"
                if kind == "time"
                else f"{steps} steps + {seconds:.2f} s"
            )
            cycle = Cycle(number=number, signal=name, moment=described)
            cycles.append(cycle)
            try:
                killed = run_cycle(run, cycle, moment, awaiting)
            except (TimeoutError, OSError, TypeError) as error:
                cycle.problems.append(f"{type(error).__name__}: {error}")
                killed = False
            print(
                f"cycle {number}: {name} at {described}: step {cycle.step_at_kill}, "
                f"checkpoint {cycle.checkpoint_after}, worker gone in {cycle.exit_seconds:.2f} s, "
                f"status {cycle.status_after or '-'}"
                + (f"; PROBLEMS: {cycle.problems}" if cycle.problems else ""),
                flush=True,
            )
            if not killed:
                break
        # A cycle that found the run finished before its kill leaves nothing to resume.
        ended = bool(cycles) and not killed and not cycles[-1].problems
        ended_from = cycles[-1].spawned_at_offset if ended else None
        final, events = finish(run, awaiting, ended_from) if run.run_id else (None, [])
        if final is None or final.problems:
            lost = True
    finally:
        wall = time.monotonic() - began
        pid = run.worker_pid() if run.run_id else None
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
        kept = f" (kept: {run.run_dir})" if args.keep else ""
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)

    print()
    header = (
        f"{'cycle':>5} {'signal':<7} {'moment':<22} {'resumed from':>12} {'step at kill':>12} "
        f"{'checkpoint':>10} {'redone':>6} {'exit s':>6} {'status':<8} {'worker_exit':<11} ok"
    )
    print(header)
    print("-" * len(header))
    for cycle in [*cycles, *([final] if final else [])]:
        label = "end" if cycle.number == 0 else str(cycle.number)
        resumed = "-" if cycle.resumed_from is None else str(cycle.resumed_from)
        redone = "-" if cycle.redone is None else str(cycle.redone)
        checkpoint = "-" if cycle.checkpoint_after is None else str(cycle.checkpoint_after)
        print(
            f"{label:>5} {cycle.signal:<7} {cycle.moment:<22} {resumed:>12} "
            f"{cycle.step_at_kill:>12} "
            f"{checkpoint:>10} {redone:>6} {cycle.exit_seconds:>6.2f} {cycle.status_after:<8} "
            f"{cycle.reported or '-':<11} "
            f"{'yes' if not cycle.problems else 'NO: ' + '; '.join(cycle.problems)}"
        )
    survived = sum(1 for c in cycles if not c.problems)
    redone = [c.redone for c in cycles if c.redone is not None]
    corrupt = sum(1 for c in [*cycles, *([final] if final else [])] if c.problems)
    kinds = {name: sum(c.signal == name for c in cycles) for name in SIGNALS}
    print()
    print(
        f"summary: {survived}/{len(cycles)} cycles survived "
        f"({', '.join(f'{n} {k}' for k, n in kinds.items())}); "
        f"steps redone after a kill: max {max(redone, default=0)}, "
        f"mean {sum(redone) / max(1, len(redone)):.1f} "
        f"(bound: checkpoint_every = {args.checkpoint_every}); "
        f"runs lost: {int(lost)}; cycles with a corrupt or inconsistent state: {corrupt}; "
        f"wall {wall:.0f} s{kept}"
    )
    ok = survived == len(cycles) and not lost and max(redone, default=0) <= args.checkpoint_every
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
