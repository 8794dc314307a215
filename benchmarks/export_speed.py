"""``convdeck export --csv`` / ``--json`` on a long run: seconds and peak memory against its length.

Fabricates a run whose events.jsonl holds ``--steps`` step events (default
1,000,000, with run_started, an epoch_end every 1,000 steps and a checkpoint
every 200: benchmarks/attach_long_run.py's ``fabricate``), then measures, for
CSV and for JSON lines:

- ``seconds``: engine.run.export.export_table in this process, the file read and written whole
  (wall clock, and this process's CPU time: the figure to read on a shared, loaded machine);
- ``rss growth``: the process's peak RSS over its RSS before the export (flat memory: a few MB);
- ``heap peak``: Python's heap peak under tracemalloc, in a second pass (tracemalloc slows it);
- ``cli``: the whole command, ``python -m tui.cli export RUN --csv FILE`` (and ``--json``), start to end.

Goal (issue 13, item 5): a million-step run exports in under 2 s with flat memory.

Usage: python benchmarks/export_speed.py [--steps 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attach_long_run import fabricate  # noqa: E402

from engine.run.export import export_table  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(run_dir: Path, kind: str, out: Path) -> dict:
    before = _rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    rows = export_table(run_dir, {kind: str(out)})
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    export_table(run_dir, {kind: str(out)})
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"kind": kind, "rows": rows, "seconds": seconds, "cpu": cpu, "rss_growth": max(0, peak - before),
            "heap_peak": heap_peak, "out_bytes": out.stat().st_size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="convdeck-export-"))
    try:
        run_dir = fabricate(home, args.steps)
        size = (run_dir / "events.jsonl").stat().st_size
        print(f"events.jsonl: {args.steps:,} steps, {size / 1e6:.0f} MB")
        for kind in ("csv", "json"):
            result = measure(run_dir, kind, home / f"out.{kind}")
            print(f"{kind:5} {result['rows']:,} rows  {result['seconds']:.2f} s ({result['cpu']:.2f} s CPU)  "
                  f"rss growth {result['rss_growth'] / 1e6:.1f} MB  heap peak {result['heap_peak'] / 1e6:.1f} MB  "
                  f"({result['out_bytes'] / 1e6:.0f} MB written)")  # fmt: skip
        env = {**os.environ, "CONVDECK_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        for kind in ("csv", "json"):
            start = time.perf_counter()
            command = [sys.executable, "-m", "tui.cli", "export", run_dir.name, f"--{kind}", str(home / f"cli.{kind}")]
            subprocess.run(command, env=env, check=True, capture_output=True)
            print(f"cli   convdeck export --{kind}, start to end: {time.perf_counter() - start:.2f} s")
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home)


if __name__ == "__main__":
    main()
