"""What XLA (``train.jit_compile``) costs and gains the engine, per run: the figures behind "auto".

Each measurement is one whole run of the engine's ``Trainer`` (``setup()``,
``run()``), in a fresh process, so no XLA or oneDNN cache carries over from
one to the next, once with ``train.jit_compile=false`` and once with
``true``, interleaved in alternating order ``--repeats`` times. A run trains
``1 + --epochs`` epochs and reports:

  first call   seconds of its first tf.function call (one step): tracing,
               graph optimisation and, with XLA, compiling
  step         the median per-step time of the step events after the first
               epoch (call time only, so the machine's drift between calls
               counts little)
  wall         the run's training seconds, ``run()`` from start to end

From the medians it prints XLA's step speed-up, its extra start-up cost (the
difference of the first calls) and the break-even: the steps a run must
train for XLA's faster steps to repay that cost: the figures behind
``engine.train.xla``'s choice for "auto".

Usage:
  python benchmarks/xla_cost.py [--preset lenet5-digits] [--epochs 10]
      [--repeats 3] [--set KEY=VALUE]...
(``--child`` is the per-run process it launches.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def child(preset: str, overrides: list[str]) -> dict:
    """One run in this process; its timings as a dict."""
    from engine.presets import load_preset
    from engine.run.control import ControlState
    from engine.run.events import EventWriter, read_events
    from engine.train.faults import Faults
    from engine.train.trainer import Trainer

    config = load_preset(preset, overrides)
    with tempfile.TemporaryDirectory(prefix="convdeck-xla-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        events = EventWriter(run_dir / "events.jsonl")
        trainer = Trainer(config, run_dir, events, ControlState(), Faults())
        trainer.setup()
        started = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - started
        events.close()
        steps = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
    later = [e["step_time"] for e in steps if e["epoch"] > 1] or [e["step_time"] for e in steps[1:]]
    return {
        "jit_compile": trainer.jit_compile,
        "first_call": steps[0]["step_time"],
        "step": statistics.median(later),
        "wall": wall,
        "steps": len(steps),
    }


def run_child(preset: str, overrides: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", "--preset", preset, "--out", out.name]
        for assignment in overrides:
            command += ["--set", assignment]
        with tempfile.TemporaryFile("w+") as chatter:
            done = subprocess.run(command, stderr=chatter)
            if done.returncode:
                chatter.seek(0)
                sys.stderr.write(chatter.read())
                raise SystemExit(f"the measuring process failed (exit {done.returncode})")
        return json.loads(Path(out.name).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="lenet5-digits")
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs after the first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        Path(args.out).write_text(json.dumps(child(args.preset, args.overrides)))
        return 0

    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    base = [*args.overrides, f"train.epochs={1 + args.epochs}"]
    variants = {"plain": "train.jit_compile=false", "xla": "train.jit_compile=true"}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            result = run_child(args.preset, [*base, variants[name]])
            results[name].append(result)
            print(
                f"  {name:<6} first call {result['first_call']:6.2f} s  "
                f"step {1000 * result['step']:7.2f} ms  run {result['wall']:6.2f} s "
                f"({result['steps']} steps)",
                flush=True,
            )
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("first_call", "step", "wall")}
        for name, rs in results.items()
    }
    plain, xla = medians["plain"], medians["xla"]
    compile_cost = xla["first_call"] - plain["first_call"]
    saved = plain["step"] - xla["step"]
    print(f"\n{args.preset}" + "".join(f" --set {shlex.quote(o)}" for o in base))
    print(f"  medians of {args.repeats}: step {1000 * plain['step']:.2f} ms plain, {1000 * xla['step']:.2f} ms XLA")
    print(f"  XLA steps: {plain['step'] / xla['step']:.2f}x as fast; its first call {compile_cost:+.2f} s")
    print(f"  run wall time: {plain['wall']:.2f} s plain, {xla['wall']:.2f} s XLA")
    if saved > 0:
        print(f"  break-even: {compile_cost / saved:.0f} steps")
    else:
        print("  break-even: never (XLA steps are not faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
