"""How fast the TUI is, measured in a real pseudo-terminal with a fake engine.

Prints:
- first frame: seconds from launching the app process to its first screen;
- key latency: seconds from a key press (``t``, the chart's x axis) to the
  changed chart legend on the terminal, p50 and p95, while a run streams steps;
- chart redraw cost for runs of 1e3 .. 1e6 steps (the same, by design);
- while watching steady training: the UI process's CPU % of one core and
  the bytes per second it writes to the terminal.

Targets (issue 5): first frame < 0.5 s, key p95 < 50 ms, CPU <= 5 %,
terminal <= 5 KB/s, redraw cost flat in run length.

Usage: python benchmarks/tui_speed.py [--seconds 20] [--steps-per-sec 20]
(``--child`` is the app process it launches.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(steps_per_sec: float) -> None:
    """The app under test: attached to a fake run that trains steadily."""
    from engine.gpu import RecordedSource
    from tui.app import ConvdeckApp
    from tui.fake_engine import FakeEngine, FakeRun, make_preset, run_started, training_events

    config = make_preset("lenet5-digits").config
    start = time.time()
    run = FakeRun(
        "bench-run",
        config,
        history=[run_started("bench-run", config, now=start, steps_per_epoch=10_000)],
    )
    engine = FakeEngine(runs=[run])
    gpu = RecordedSource.from_file(ROOT / "tests" / "fixtures" / "nvml" / "one_gpu.json", loop=True)
    app = ConvdeckApp(engine=engine, gpu_source=gpu, attach="bench-run")

    async def stream() -> None:
        # A worker flushes step lines in batches about every 0.5 s.
        step = 1
        per_batch = max(1, int(steps_per_sec / 2))
        while True:
            await asyncio.sleep(0.5)
            events = training_events(
                per_batch,
                start_step=step,
                steps_per_epoch=10_000,
                now=start,
                step_time=1 / steps_per_sec,
            )
            run.feed(*events)
            step += per_batch

    def on_mount() -> None:
        app.run_worker(stream(), group="bench-stream")

    app.call_after_refresh(on_mount)
    app.run()


class Terminal:
    """The app process in a pty; counts what it writes."""

    def __init__(self, args: list[str], size: tuple[int, int] = (120, 36)) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["COLUMNS"], os.environ["LINES"] = str(size[0]), str(size[1])
            os.environ["TERM"] = "xterm-256color"
            os.execv(sys.executable, [sys.executable, *args])
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        self.bytes = 0
        self.buffer = b""

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return b""
        self.bytes += len(data)
        self.buffer = (self.buffer + data)[-200_000:]
        return data

    def wait_for(self, needle: bytes, timeout: float) -> float | None:
        start = time.perf_counter()
        seen = b""
        while time.perf_counter() - start < timeout:
            seen += self.read(0.005)
            if needle in seen:
                return time.perf_counter() - start
            seen = seen[-4096:]
        return None

    def drain(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.read(0.05)

    def close(self) -> None:
        os.write(self.fd, b"q")
        time.sleep(0.3)
        os.write(self.fd, b"l")
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def measure_terminal(seconds: float, steps_per_sec: float) -> None:
    import psutil

    launched = time.perf_counter()
    term = Terminal([__file__, "--child", "--steps-per-sec", str(steps_per_sec)])
    first = term.wait_for(b"Config", 20.0)
    print(
        f"first frame            {first:.3f} s after launch" if first else "first frame: not seen"
    )
    attached = term.wait_for(b"x: step", 20.0)
    print(
        f"attached, chart shown  {time.perf_counter() - launched:.3f} s after launch"
        if attached
        else "chart: not seen"
    )
    term.drain(2.0)

    latencies = []
    for index in range(20):
        label = (b"x: epoch", b"x: minutes", b"x: step")[index % 3]
        os.write(term.fd, b"t")
        latency = term.wait_for(label, 2.0)
        if latency is not None:
            latencies.append(latency)
        term.drain(0.2)
    if latencies:
        latencies.sort()
        p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
        print(
            f"key latency            p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms ({len(latencies)}/20 seen)"
        )

    process = psutil.Process(term.pid)
    term.drain(1.0)
    process.cpu_percent(None)
    before = term.bytes
    start = time.perf_counter()
    term.drain(seconds)
    elapsed = time.perf_counter() - start
    cpu = process.cpu_percent(None)
    rate = (term.bytes - before) / elapsed
    print(
        f"watching ({steps_per_sec:g} steps/s, {elapsed:.0f} s): CPU {cpu:.1f} % of a core, "
        f"{rate / 1024:.2f} KB/s to the terminal"
    )
    term.close()


def measure_chart_cost() -> None:
    from engine.history import RunHistory
    from tui.widgets.loss_chart import LossChart

    print("chart redraw cost (100x30), by run length:")
    for steps in (1_000, 10_000, 100_000, 1_000_000):
        history = RunHistory()
        ingest_start = time.perf_counter()
        history.ingest(
            {
                "type": "step",
                "time": 1e9 + s * 0.05,
                "step": s,
                "epoch": s // 1000,
                "loss": 2.0 / (1 + s / 500) + (s * 7919 % 101) / 1000,
                "accuracy": 0.5,
                "learning_rate": 1e-3,
                "images_per_sec": 1000.0,
            }
            for s in range(1, steps + 1)
        )
        ingest = time.perf_counter() - ingest_start
        chart = LossChart()
        chart.history = history
        times = []
        for _ in range(5):
            start = time.perf_counter()
            chart._draw(100, 30)
            times.append(time.perf_counter() - start)
        print(
            f"  {steps:>9,} steps: redraw {statistics.median(times) * 1000:6.1f} ms, "
            f"{len(history.series['loss'])} buckets (ingest {ingest:.2f} s)"
        )


def measure_import() -> None:
    code = "import time; t = time.perf_counter(); import tui.app; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    print(f"import tui.app         {float(result.stdout.strip()):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help="watching time measured")
    parser.add_argument("--steps-per-sec", type=float, default=20.0, help="fake training speed")
    parser.add_argument("--skip-chart", action="store_true", help="skip the run-length sweep")
    args = parser.parse_args()
    if args.child:
        child(args.steps_per_sec)
        return
    measure_import()
    measure_terminal(args.seconds, args.steps_per_sec)
    if not args.skip_chart:
        measure_chart_cost()


if __name__ == "__main__":
    main()
