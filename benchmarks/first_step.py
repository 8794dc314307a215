"""From Enter to the first step: a cold start against a warm worker, as the TUI starts runs.

Each measurement starts one run through the TUI's engine (``tui.engine_link.RealEngine``,
what Enter calls) in a scratch CONVDECK_HOME and times, from the
``start_run`` call:

  returned     start_run's return (preflight, the run directory, the worker's answer)
  run_started  the worker's ``run_started`` event appearing in events.jsonl
  first step   the first ``step`` event appearing in events.jsonl (what the TUI's
               tail shows next; the TUI polls the file every 0.2 s)

cold: an engine that never warmed up (a fresh supervisor and worker, TensorFlow
imported after Enter). warm: an engine whose ``warm_up()`` ran and whose warm
worker said it was ready, then ``--settle`` seconds of quiet, as a person reading
the preset list gives it. After a warm start the engine starts the replacement at
once, as in the TUI; ``--no-replace`` measures without it (the replacement's import
competes with the new run for the CPU). Cold and warm alternate, ``--repeats``
times each; each run is waited for to its end before the next.

Usage:
  python benchmarks/first_step.py [--preset lenet5-digits] [--repeats 3]
      [--settle 2] [--no-replace] [--set KEY=VALUE]...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLL_SECONDS = 0.01


def first_times(events_path: Path, started: float, timeout: float = 300.0) -> dict:
    """Seconds from ``started`` until run_started and the first step appear in the file."""
    seen: dict = {}
    deadline = time.monotonic() + timeout
    while "first step" not in seen and time.monotonic() < deadline:
        try:
            text = events_path.read_text()
        except FileNotFoundError:
            text = ""
        now = time.perf_counter() - started
        for line in text.splitlines():
            kind = json.loads(line).get("type") if line.endswith("}") else None
            if kind == "run_started":
                seen.setdefault("run_started", now)
            elif kind == "step":
                seen.setdefault("first step", now)
            elif kind in ("failed", "worker_exit"):
                raise SystemExit(f"the run ended without a step: {line}")
        time.sleep(POLL_SECONDS)
    return seen


def measure(start, config) -> dict:
    """One run started by ``start(config)`` (a coroutine function), timed, and waited for to its end."""
    started = time.perf_counter()
    run = asyncio.run(start(config))
    times = {"returned": time.perf_counter() - started}
    times.update(first_times(run.run_dir / "events.jsonl", started))
    run.wait_exit(300)
    return times


def wait_ready(engine, settle: float) -> None:
    deadline = time.monotonic() + 300
    while not engine.warm.ready():
        if time.monotonic() > deadline:
            raise SystemExit("the warm worker never said it was ready")
        time.sleep(0.05)
    time.sleep(settle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lenet5-digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of quiet after the warm worker is ready")
    parser.add_argument("--no-replace", action="store_true", help="no replacement warm worker after a warm start")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cdk-first-step-", dir="/tmp"))
    os.environ["CONVDECK_HOME"] = str(home)
    from engine.presets import load_preset
    from engine.run import client
    from tui.engine_link import RealEngine

    config = load_preset(args.preset, args.overrides)
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    warm_engine = RealEngine(home)
    try:
        for repeat in range(args.repeats):
            order = ("cold", "warm") if repeat % 2 == 0 else ("warm", "cold")
            for kind in order:
                if kind == "warm":
                    warm_engine.warm_up()
                    wait_ready(warm_engine, args.settle)
                    start = warm_engine.start_run
                    if args.no_replace:  # the same hand-off, without the engine's replacement after it
                        start = partial(client.start_run, home=home, warm=warm_engine.warm.take())
                    times = measure(start, config)
                else:
                    time.sleep(args.settle)
                    times = measure(RealEngine(home).start_run, config)
                results[kind].append(times)
                print(f"{kind}: " + "  ".join(f"{k} {v:.2f} s" for k, v in times.items()), flush=True)
    finally:
        warm_engine.close()
        shutil.rmtree(home, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\n{args.preset} {' '.join(args.overrides)}; medians of {args.repeats}; load average {load:.2f}")
    for kind, runs in results.items():
        medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"  {kind:5} " + "  ".join(f"{k} {v:.2f} s" for k, v in medians.items()))


if __name__ == "__main__":
    main()
