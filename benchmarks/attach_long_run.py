"""Attaching to a long run: time to the live tail, and memory, against the events file's length.

Fabricates run directories whose events.jsonl holds 100,000 and 1,000,000
step events (with run_started, an epoch_end every 1,000 steps and a
checkpoint every 200), marks each run live (this process's pid and a fresh
heartbeat), and measures in a fresh child process per figure:

- ``tui``: the TUI's own path (tui/run_watch.py ``_attach`` and ``_tail``): the run's
  facts read whole at once (``RunHandle.summary()``: what the header shows
  before the history is in; "snapshot s"), then ``RunHandle.events(
  history_steps=HISTORY_STEPS)`` folded into ``RunFacts`` and engine.run.history's
  ``RunHistory`` in ``INGEST_CHUNK`` slices, yielding to the event loop between
  slices. A thread appends a live step line every 0.1 s from the moment
  following begins; "live tail" is the time until the first of those is folded in.
- ``full``: the same without thinning (``history_steps=None``): every step
  line parsed and folded in. The baseline the thinning saves.
- ``tui+poll``: ``tui`` with the app's liveness check every 2 s in a thread
  (``tui.app._liveness``: the worker's pid, and a summary only once it is
  gone; ``RunHandle.summary()`` where the app has no such function).
- ``summary``: ``RunHandle.summary()`` (engine.run.store.summarize_run: the one
  fold, engine.run.facts), which ``convdeck runs`` calls for every run; and
  ``convdeck show``'s figures (the same fold, and ``metrics_json``).

Memory: the peak of Python's heap under tracemalloc while following (a
second child, as tracemalloc slows the code it watches), and the growth of
the child's peak RSS over its RSS after imports.

Goal (issue 3, item 7): live tail in < 2 s at 1,000,000 steps; memory flat in
the file's length.

Usage: python benchmarks/attach_long_run.py [--sizes 100000 1000000] [--keep]
(``--child MODE RUN_DIR`` is one measurement; it prints one JSON line.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS_PER_EPOCH = 1000
CHECKPOINT_EVERY = 200
LIVE_EVERY = 0.1  # seconds between the live steps the "worker" appends
FOLLOW_SECONDS = 12.0  # how long to keep following once live, measuring each step's lag


# -- fabricating a long run --------------------------------------------------------------------


def fabricate(home: Path, steps: int) -> Path:
    """A run directory as a worker would leave it after ``steps`` steps, still live."""
    import psutil

    from engine.config import RunConfig
    from engine.run.store import write_config

    run_dir = home / "runs" / f"20250101-000000-long-{steps}"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = RunConfig(name="lenet5-digits")
    write_config(run_dir, config)
    start = time.time() - steps * 0.01
    with open(run_dir / "events.jsonl", "w") as out:
        started = {
            "type": "run_started",
            "time": round(start, 3),
            "config": config.model_dump(mode="json"),
            "run_id": run_dir.name,
            "devices": ["/device:CPU:0"],
            "steps_per_epoch": STEPS_PER_EPOCH,
            "epochs": steps // STEPS_PER_EPOCH + 1,
            "total_steps": (steps // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH,
            "resumed_from_step": None,
        }
        out.write(json.dumps(started) + "\n")
        lines = []
        for n in range(1, steps + 1):
            now = round(start + n * 0.01, 3)
            epoch = (n - 1) // STEPS_PER_EPOCH + 1
            loss = 2.3 / (1 + n / 5000) + 0.01 * ((n * 7919) % 13) / 13
            # json.dumps field order and spacing, as EventWriter writes them.
            lines.append(
                f'{{"type": "step", "time": {now}, "step": {n}, "epoch": {epoch}, '
                f'"loss": {loss:.6f}, "accuracy": {min(0.99, 0.1 + n / steps):.5f}, '
                f'"learning_rate": 0.001, "images_per_sec": 12345.6, "step_time": 0.01037}}\n'
            )
            if n % CHECKPOINT_EVERY == 0:
                lines.append(
                    json.dumps({"type": "checkpoint", "time": now, "step": n,
                                "path": str(run_dir / "checkpoints" / f"ckpt-{n}")}) + "\n"
                )  # fmt: skip
            if n % STEPS_PER_EPOCH == 0:
                lines.append(
                    json.dumps({"type": "epoch_end", "time": now, "epoch": epoch, "step": n,
                                "loss": loss, "accuracy": 0.9, "val_loss": loss * 1.1,
                                "val_accuracy": 0.88}) + "\n"
                )  # fmt: skip
            if len(lines) >= 50_000:
                out.write("".join(lines))
                lines.clear()
        out.write("".join(lines))
    me = psutil.Process()
    (run_dir / "worker.pid").write_text(f"{me.pid} {me.create_time()}")
    (run_dir / "heartbeat").touch()
    return run_dir


# -- one measurement, in a child process ---------------------------------------------------------


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class LiveWorker:
    """Appends a step line every LIVE_EVERY seconds, as the run's worker would.

    ``appended`` maps each live step to when it was written (perf_counter).
    """

    def __init__(self, run_dir: Path, first_step: int) -> None:
        self.path = run_dir / "events.jsonl"
        self.first_step = first_step
        self.step = first_step
        self.appended: dict[int, float] = {}
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._append, daemon=True)
        self._thread.start()

    def _append(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            while not self._stop.wait(LIVE_EVERY):
                line = json.dumps({"type": "step", "time": round(time.time(), 3), "step": self.step,
                                   "epoch": 1, "loss": 0.1})  # fmt: skip
                self.appended[self.step] = time.perf_counter()
                os.write(fd, (line + "\n").encode())
                self.step += 1
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class LivenessPoller:
    """tui/run_watch.py ``_check_liveness``: in a thread, 2 s after the last check ended, what
    the app asks (``tui.app._liveness`` where it exists, else ``run.summary()``)."""

    def __init__(self, handle, interval: float = 2.0) -> None:
        try:
            from tui.app import _liveness as check
        except ImportError:
            check = None
        self.check = check or (lambda run: run.summary())
        self.how = "tui.app._liveness" if check else "RunHandle.summary"
        self.handle = handle
        self.interval = interval
        self.durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            self.check(self.handle)
            self.durations.append(time.perf_counter() - started)

    def stop(self) -> None:
        self._stop.set()


async def follow_like_the_tui(
    run_dir: Path, history_steps: int | None, follow_seconds: float = 0.0, poll: bool = False
) -> dict:
    """tui/run_watch.py ``_attach`` and ``_tail``: the run's facts at once, then events in
    batches, folded into RunFacts and RunHistory in INGEST_CHUNK slices.

    After reaching the live tail it keeps following for ``follow_seconds`` and
    records how late each live step is folded in (appended -> folded).
    """
    from engine.run.client import RunHandle
    from engine.run.events import last_event_of
    from engine.run.facts import RunFacts
    from engine.run.history import RunHistory
    from engine.run.protocol import Step
    from tui.app import INGEST_CHUNK

    handle = RunHandle(run_dir)
    facts, history = RunFacts(run_id=handle.run_id), RunHistory()
    figures: dict = {"events_folded": 0}
    lags: list[float] = []
    t0 = time.perf_counter()
    live_since, cpu_since = float("inf"), 0.0
    last = last_event_of(handle.events_path, ("step",))
    live = LiveWorker(run_dir, first_step=(last.step if last else 0) + 1)
    poller = LivenessPoller(handle) if poll else None
    until = None
    try:
        snapshot = handle.summary()  # what the header shows at once (tui/run_watch.py _attach)
        figures["snapshot_s"] = time.perf_counter() - t0
        figures["snapshot_step"] = snapshot.step
        async for batch in handle.events(from_start=True, history_steps=history_steps):
            figures.setdefault("first_batch_s", time.perf_counter() - t0)
            for start in range(0, len(batch), INGEST_CHUNK):
                chunk = batch[start : start + INGEST_CHUNK]
                facts.apply(chunk)
                history.ingest(chunk)
                figures["events_folded"] += len(chunk)
                now = time.perf_counter()
                folded = [
                    (live.appended[e.step], now)
                    for e in chunk
                    if isinstance(e, Step) and isinstance(e.step, int) and e.step in live.appended
                ]
                if folded and "live_tail_s" not in figures:
                    figures["live_tail_s"] = now - t0
                    until = now + follow_seconds
                    live_since, cpu_since = now, time.process_time()
                # Steady state only: steps appended once the live tail was reached.
                lags += [done - appended for appended, done in folded if appended >= live_since]
                await asyncio.sleep(0)
            if until is not None and time.perf_counter() >= until:
                break
    finally:
        live.stop()
        if poller:
            poller.stop()
    if follow_seconds:
        lags.sort()
        figures.update(
            live_lag_p50_s=lags[len(lags) // 2],
            live_lag_max_s=lags[-1],
            live_steps_appended=live.step - live.first_step,
            live_steps_measured=len(lags),
            # CPU of this process (all threads) per second of following live.
            cpu_share=(time.process_time() - cpu_since) / (time.perf_counter() - live_since),
        )
    if poller:
        figures["liveness_check"] = poller.how
        figures["summary_calls"] = len(poller.durations)
        figures["summary_call_s"] = poller.durations
    figures.update(
        chart_points=history.series["loss"].count,
        chart_buckets=len(history.series["loss"]),
        bucket_size=history.series["loss"].bucket_size,
        step_reached=facts.step,
    )
    return figures


def child(mode: str, run_dir: Path) -> dict:
    import tracemalloc

    # Everything the measured code imports, before the baseline.
    import engine.run.client  # noqa: F401
    import engine.run.facts  # noqa: F401
    import tui.app  # noqa: F401
    from engine.run.client import RunHandle
    from tui.app import HISTORY_STEPS

    traced = mode.endswith("-mem")
    mode = mode.removesuffix("-mem")
    baseline_rss = _rss()
    if traced:
        tracemalloc.start()
    if mode == "summary":
        t0 = time.perf_counter()
        summary = RunHandle(run_dir).summary()
        figures = {"summary_s": time.perf_counter() - t0, "status": summary.status}
        t0 = time.perf_counter()
        RunHandle(run_dir).summary().metrics_json()
        figures["show_metrics_s"] = time.perf_counter() - t0
    else:
        history_steps = None if mode == "full" else HISTORY_STEPS
        follow = FOLLOW_SECONDS if mode in ("tui", "tui+poll") and not traced else 0.0
        figures = asyncio.run(
            follow_like_the_tui(run_dir, history_steps, follow, poll=mode == "tui+poll")
        )
        figures["history_steps"] = history_steps
    if traced:
        figures["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    figures["rss_growth_mb"] = max(0, peak_rss - baseline_rss) / 2**20
    return figures


def measure(mode: str, run_dir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def truncate_to(run_dir: Path, size: int) -> None:
    """Drop what the live appender added, so every measurement sees the same history."""
    os.truncate(run_dir / "events.jsonl", size)
    (run_dir / "heartbeat").touch()


# -- the report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", action="store_true", help="keep the fabricated runs")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    home = Path(tempfile.mkdtemp(prefix="cdk-attach-", dir="/tmp"))
    rows = []
    try:
        for steps in args.sizes:
            t0 = time.perf_counter()
            run_dir = fabricate(home, steps)
            size = (run_dir / "events.jsonl").stat().st_size
            print(
                f"fabricated {steps:,} steps: {size / 2**20:.0f} MiB in "
                f"{time.perf_counter() - t0:.1f} s ({run_dir})",
                flush=True,
            )
            row = {"steps": steps, "mib": size / 2**20}
            for mode in ("tui", "tui-mem", "tui+poll", "full", "full-mem", "summary"):
                figures = measure(mode, run_dir)
                truncate_to(run_dir, size)
                row[mode] = figures
                print(f"  {mode:<8} {json.dumps(figures)}", flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    def cell(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    print()
    print(
        "1) attach to a live run: the TUI's path "
        "(the run's facts at once, thinned history -> RunFacts/RunHistory, then live)"
    )
    print("   against a full replay of every event")
    header = (
        f"{'steps':>10} {'file MiB':>8} | {'snapshot s':>10} {'first batch s':>13} "
        f"{'live tail s':>11} "
        f"{'events folded':>13} {'heap peak MiB':>13} {'RSS +MiB':>8} | "
        f"{'full replay s':>13} {'heap peak MiB':>13} {'RSS +MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        tui, tui_mem, full, full_mem = (row[k] for k in ("tui", "tui-mem", "full", "full-mem"))
        print(
            f"{row['steps']:>10,} {row['mib']:>8.0f} | {cell(tui.get('snapshot_s'), '10.3f')} "
            f"{cell(tui.get('first_batch_s'), '13.3f')} "
            f"{cell(tui.get('live_tail_s'), '11.3f')} {tui['events_folded']:>13,} "
            f"{tui_mem['tracemalloc_peak_mb']:>13.1f} {tui['rss_growth_mb']:>8.1f} | "
            f"{cell(full.get('live_tail_s'), '13.3f')} {full_mem['tracemalloc_peak_mb']:>13.1f} "
            f"{full['rss_growth_mb']:>8.1f}"
        )
    print()
    print(
        f"2) following live for {FOLLOW_SECONDS:g} s after that "
        f"(a step appended every {LIVE_EVERY:g} s):"
    )
    print(
        "   lag from append to fold, alone and with the TUI's liveness check every 2 s "
        f"({rows[0]['tui+poll'].get('liveness_check', '?')})"
    )
    header = (
        f"{'steps':>10} | {'lag p50 s':>9} {'lag max s':>9} {'CPU':>5} | "
        f"{'+poll: live tail s':>18} "
        f"{'lag p50 s':>9} {'lag max s':>9} {'CPU':>5} {'checks':>6} {'s per check':>11} | "
        f"{'summary s':>9} {'show s':>7} {'RSS +MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        tui, polled, summary = row["tui"], row["tui+poll"], row["summary"]
        per_call = polled.get("summary_call_s") or []
        print(
            f"{row['steps']:>10,} | {tui['live_lag_p50_s']:>9.3f} {tui['live_lag_max_s']:>9.3f} "
            f"{tui['cpu_share']:>5.0%} | "
            f"{cell(polled.get('live_tail_s'), '18.3f')} {polled['live_lag_p50_s']:>9.3f} "
            f"{polled['live_lag_max_s']:>9.3f} {polled['cpu_share']:>5.0%} "
            f"{polled['summary_calls']:>6} "
            f"{(sum(per_call) / len(per_call) if per_call else float('nan')):>11.3f} | "
            f"{summary['summary_s']:>9.3f} {summary['show_metrics_s']:>7.3f} "
            f"{summary['rss_growth_mb']:>8.1f}"
        )
    print()
    print("live tail s: from starting to follow until the first step appended after that is folded")
    print(
        "in; goal < 2 s at 1,000,000 steps. heap peak: tracemalloc peak, in a separate child run."
    )
    print(
        "RSS +MiB: the child's peak RSS over its RSS after imports. summary s: RunHandle.summary()"
    )
    print("(engine.run.store.summarize_run: `convdeck runs` per run; the TUI's snapshot on attach);")
    print("show s: that fold and its figures (`convdeck show`). lag: append -> folded, for steps")
    print("appended after")
    print("the live tail was reached; CPU: the viewer's CPU time per second while following live.")
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]

        def grew(mode: str, key: str) -> str:
            return f"x{large[mode][key] / small[mode][key]:.2f}"

        print(
            f"file x{large['steps'] / small['steps']:.0f}: live tail {grew('tui', 'live_tail_s')}, "
            f"heap peak {grew('tui-mem', 'tracemalloc_peak_mb')} (thinned); "
            f"full replay {grew('full', 'live_tail_s')}, "
            f"heap peak {grew('full-mem', 'tracemalloc_peak_mb')}; "
            f"summary {grew('summary', 'summary_s')}"
        )


if __name__ == "__main__":
    main()
