"""How good is the ETA? A real run, its events folded as a viewer folds them, each prediction checked.

    python benchmarks/eta_check.py [--preset lenet5-digits] [--epochs 30] [--save run.jsonl]
    python benchmarks/eta_check.py --events run.jsonl

Runs ``convdeck run PRESET --json`` in a scratch CONVDECK_HOME (or reads the
events of a run recorded with ``--save``, to judge a new estimate on the same
run) and, at every step line once 5% of the steps are done, compares when
RunFacts says the run will end (event time + ETA) with when it did end.
Prints the worst and the median error as a share of the time that was still
left.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.run import protocol  # noqa: E402
from engine.run.facts import RunFacts  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lenet5-digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--save", type=Path, help="also write the run's events to this file")
    parser.add_argument("--events", type=Path, help="check these recorded events instead of running")
    args = parser.parse_args()
    if args.events:
        lines = args.events.read_text().splitlines()
    else:
        home = tempfile.mkdtemp(prefix="convdeck-eta-")
        epochs = f"train.epochs={args.epochs}"
        command = [sys.executable, "-m", "tui.cli", "run", args.preset, "--json", "--set", epochs]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CONVDECK_HOME": home})
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        lines = done.stdout.splitlines()
        if args.save:
            args.save.write_text(done.stdout)
    events = [protocol.from_dict(json.loads(line)) for line in lines if line.startswith("{")]
    finish = next(e.time for e in reversed(events) if e.type == "finished")
    facts = RunFacts()
    errors: list[tuple[float, float]] = []
    lefts: list[float] = []
    for event in events:
        facts.fold(event)
        total = facts.total_steps
        if event.type != "step" or not total or facts.step < 0.05 * total:
            continue
        eta = facts.eta_seconds()
        left = finish - event.time
        if eta is not None and left > 1.0:
            errors.append((facts.step / total, abs(event.time + eta - finish) / left))
            lefts.append(left)
    worst = max(error for _, error in errors)
    print(f"{facts.preset}, {facts.epochs} epochs, {facts.step} steps, {finish - events[0].time:.1f} s")
    print(f"ETA checked at {len(errors)} step lines from 5% done (while more than 1 s was left)")
    print(f"error as a share of the time left: median {statistics.median(e for _, e in errors):.1%}, worst {worst:.1%}")
    # The last seconds hold the end's checkpoint, model.keras and evaluation, which no ETA
    # foresees: there an error of a second is a large share of what is left.
    lasting = [error for error, left in zip(errors, lefts, strict=True) if left > 10.0]
    if lasting:
        print(f"while more than 10 s was left ({len(lasting)} lines): worst {max(e for _, e in lasting):.1%}")
    for mark in (0.05, 0.25, 0.5, 0.75):
        at = min(errors, key=lambda item: abs(item[0] - mark))
        print(f"  at {at[0]:.0%} done: {at[1]:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
