"""How fast the TUI is, measured in a real pseudo-terminal with a fake engine.

Prints:
- first frame: seconds from launching the app process to its first screen,
  for the app alone and through the `convdeck` command (its CLI imports too);
- key latency: seconds from a key press (``t``, the chart's x axis) to the
  changed chart legend on the terminal, p50 and p95, while a run streams steps;
- chart redraw cost for runs of 1e3 .. 1e6 steps (the same, by design);
- while watching steady training (a run ``--history-steps`` long that goes
  on at ``--steps-per-sec``): the UI process's CPU % of one core and the
  bytes per second it writes to the terminal;
- attaching to a run of ``--attach-steps`` step events (the real engine,
  reading a real events file): seconds until its last step is on screen,
  and until an event written after that shows.

Targets (issue 5): first frame < 0.5 s, key p95 < 50 ms, CPU <= 5 %,
terminal <= 5 KB/s, redraw cost flat in run length, attach to 1M steps < 2 s.

Usage: python benchmarks/tui_speed.py [--seconds 20] [--steps-per-sec 20]
[--history-steps 20000] [--attach-steps 1000000] [--skip-chart] [--skip-attach]
(``--child`` is the app process it launches.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare_child() -> None:
    """The reference for the first frame: a Textual app with one line of text, nothing else."""
    from textual.app import App
    from textual.widgets import Static

    class Bare(App):
        def compose(self):
            yield Static("Config")

    Bare().run()


def child(steps_per_sec: float, history_steps: int) -> None:
    """The app under test: attached to a fake run that has trained a while and goes on steadily."""
    from engine.gpu import RecordedSource
    from tests.fake_engine import FakeEngine, FakeRun, make_preset, run_started, training_events
    from tui.app import ConvdeckApp

    config = make_preset("lenet5-digits").config
    step_time = 1 / steps_per_sec
    start = time.time() - history_steps * step_time
    history = [run_started("bench-run", config, now=start, steps_per_epoch=10_000)]
    history += training_events(
        history_steps, steps_per_epoch=10_000, now=start, step_time=step_time
    )
    run = FakeRun("bench-run", config, history=history)
    engine = FakeEngine(runs=[run])
    gpu = RecordedSource.from_file(ROOT / "tests" / "fixtures" / "nvml" / "one_gpu.json", loop=True)
    app = ConvdeckApp(engine=engine, gpu_source=gpu, attach="bench-run")

    async def stream() -> None:
        # A worker flushes step lines in batches about every 0.5 s.
        step = history_steps + 1
        per_batch = max(1, int(steps_per_sec / 2))
        while True:
            await asyncio.sleep(0.5)
            events = training_events(
                per_batch,
                start_step=step,
                steps_per_epoch=10_000,
                now=start,
                step_time=step_time,
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

    def close(self, keys: tuple[bytes, ...] = (b"q", b"l")) -> None:
        """Quit as a person would (q, then l to leave the run going); kill it if it hangs."""
        import signal

        for key in keys:
            try:
                os.write(self.fd, key)
            except OSError:
                break  # it quit on q: there was no live run to ask about
            self.drain(0.5)
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                    return
            except ChildProcessError:
                return
            self.drain(0.1)
        print("  (the app did not quit on q, l: killed)")
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def measure_terminal(seconds: float, steps_per_sec: float, history_steps: int) -> None:
    import psutil

    launched = time.perf_counter()
    term = Terminal(
        [
            __file__,
            "--child",
            "--steps-per-sec",
            str(steps_per_sec),
            "--history-steps",
            str(history_steps),
        ]
    )
    first = term.wait_for(b"Config", 20.0)
    print(
        f"first frame, the app (attaching) {first:.3f} s after launch"
        if first
        else "first frame: not seen"
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
        f"watching ({steps_per_sec:g} steps/s after {history_steps:,}, {elapsed:.0f} s): "
        f"CPU {cpu:.1f} % of a core, {rate / 1024:.2f} KB/s to the terminal"
    )
    term.close()


def write_long_run(home: Path, steps: int) -> str:
    """A live run directory whose events.jsonl holds ``steps`` step events (an epoch end per 1000)."""
    import json

    from engine.presets import load_preset
    from engine.run.store import create_run_dir

    config = load_preset("lenet5-digits", ())
    run_dir = create_run_dir(config, home)
    begin = time.time() - steps * 0.01
    started = {
        "type": "run_started",
        "time": begin,
        "run_id": run_dir.name,
        "config": config.model_dump(mode="json"),
        "steps_per_epoch": 1000,
        "epochs": steps // 1000 + 1,
        "devices": ["/gpu:0"],
    }
    with open(run_dir / "events.jsonl", "w") as events:
        events.write(json.dumps(started) + "\n")
        lines = []
        for step in range(1, steps + 1):
            loss = 2.3 * 0.9995**step + 0.05 + (step * 7919 % 101) / 2000
            lines.append(
                f'{{"type": "step", "time": {begin + step * 0.01:.3f}, "step": {step}, '
                f'"epoch": {(step - 1) // 1000 + 1}, "loss": {loss:.6f}, "accuracy": 0.9, '
                f'"learning_rate": 0.001, "images_per_sec": 1280.0, "step_time": 0.01}}\n'
            )
            if step % 1000 == 0:
                end = {"type": "epoch_end", "time": begin + step * 0.01, "epoch": step // 1000}
                lines.append(json.dumps({**end, "step": step, "val_loss": loss * 1.1}) + "\n")
            if len(lines) >= 10_000:
                events.writelines(lines)
                lines = []
        events.writelines(lines)
    # Live, as a run being trained is: this process stands in for its worker.
    import psutil

    me = psutil.Process()
    (run_dir / "worker.pid").write_text(f"{me.pid} {me.create_time()}")
    (run_dir / "heartbeat").touch()
    return run_dir.name


def measure_attach(steps: int) -> None:
    """Attach the app (real engine, headless) to a long run; time to its live tail."""
    import json
    import tempfile

    from engine.gpu import RecordedSource
    from tui.app import ConvdeckApp
    from tui.engine_link import RealEngine

    with tempfile.TemporaryDirectory() as home:
        run_id = write_long_run(Path(home), steps)
        events_path = Path(home) / "runs" / run_id / "events.jsonl"
        size = events_path.stat().st_size
        gpu = RecordedSource.from_file(ROOT / "tests" / "fixtures" / "nvml" / "one_gpu.json")
        app = ConvdeckApp(engine=RealEngine(Path(home)), gpu_source=gpu, attach=run_id)

        async def attach() -> tuple[float, float, float, float]:
            from tui.widgets.loss_chart import LossChart

            async with app.run_test(size=(120, 36)) as pilot:
                start = time.perf_counter()
                chart = app.query_one(LossChart)
                while not (app.state and app.state.step == steps):
                    await pilot.pause(0.01)
                facts = time.perf_counter() - start  # the header's figures: the run's facts
                while not (app.history and app.history.step == steps):
                    await pilot.pause(0.01)
                history = time.perf_counter() - start
                while "x: step" not in chart.render().plain or chart.hold:
                    await pilot.pause(0.01)
                drawn = time.perf_counter() - start
                with open(events_path, "a") as events:
                    events.write(json.dumps({"type": "paused", "time": time.time()}) + "\n")
                while app.state.status != "paused":
                    await pilot.pause(0.01)
                return facts, history, drawn, time.perf_counter() - start

        facts, history, drawn, live = asyncio.run(attach())
        buckets = len(app.history.series["loss"]) if app.history else 0
        print(
            f"attach to {steps:,} steps ({size / 1e6:.0f} MB): its figures in {facts:.2f} s, "
            f"last step in the chart in {history:.2f} s, "
            f"whole chart drawn {drawn:.2f} s, a new event shown {live:.2f} s "
            f"({buckets} chart buckets)"
        )


def measure_chart_cost() -> None:
    from engine.run.history import RunHistory
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


def first_frame(args: list[str], quit_keys: tuple[bytes, ...] = (b"q", b"l")) -> float | None:
    """Seconds from launching ``python ARGS`` in a pty to "Config" on its screen."""
    term = Terminal(args)
    first = term.wait_for(b"Config", 20.0)
    term.close(quit_keys)
    return first


def convdeck_script() -> str:
    """The installed ``convdeck`` console script beside this Python (what a user runs)."""
    script = Path(sys.executable).parent / "convdeck"
    return str(script) if script.exists() else shutil.which("convdeck") or "convdeck"


def measure_first_frames(repeats: int) -> None:
    """The app's first frame beside a bare Textual app's (the floor on this machine, now).

    The three are launched in turn ``repeats`` times, so load on the machine
    touches them alike; the median and the slowest are printed.
    """
    import tempfile

    cases = {
        "bare Textual app": ([__file__, "--child-bare"], (b"\x11",)),  # ctrl+q
        "tui.app.run_app()": (["-c", "import tui.app; tui.app.run_app()"], (b"q", b"l")),
        "`convdeck` command": ([convdeck_script()], (b"q", b"l")),
    }
    seen: dict[str, list[float]] = {label: [] for label in cases}
    with tempfile.TemporaryDirectory() as home:
        os.environ["CONVDECK_HOME"] = home
        for _ in range(repeats):
            for label, (args, quit_keys) in cases.items():
                seconds = first_frame(args, quit_keys=quit_keys)
                if seconds is not None:
                    seen[label].append(seconds)
    bare = statistics.median(seen["bare Textual app"]) if seen["bare Textual app"] else None
    for label, times in seen.items():
        if not times:
            print(f"first frame, {label:<18} not seen")
            continue
        median = statistics.median(times)
        ratio = f", {median / bare:.2f}x the bare app" if bare else ""
        print(
            f"first frame, {label:<18} median {median:.3f} s, slowest {max(times):.3f} s "
            f"after launch ({len(times)} launches{ratio})"
        )


def measure_import() -> None:
    code = "import time; t = time.perf_counter(); import tui.app; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    print(f"import tui.app         {float(result.stdout.strip()):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help="watching time measured")
    parser.add_argument("--steps-per-sec", type=float, default=20.0, help="fake training speed")
    parser.add_argument(
        "--history-steps", type=int, default=20_000, help="steps the watched run has done already"
    )
    parser.add_argument(
        "--attach-steps", type=int, default=1_000_000, help="length of the run attached to"
    )
    parser.add_argument("--skip-chart", action="store_true", help="skip the run-length sweep")
    parser.add_argument("--skip-attach", action="store_true", help="skip the long-run attach")
    parser.add_argument(
        "--first-frame-repeats", type=int, default=5, help="launches of each app for first frame"
    )
    parser.add_argument(
        "--first-frame-only", action="store_true", help="measure the first frame and stop"
    )
    args = parser.parse_args()
    if args.child:
        child(args.steps_per_sec, args.history_steps)
        return
    if args.child_bare:
        bare_child()
        return
    measure_import()
    measure_first_frames(args.first_frame_repeats)
    if args.first_frame_only:
        return
    measure_terminal(args.seconds, args.steps_per_sec, args.history_steps)
    if not args.skip_attach:
        measure_attach(args.attach_steps)
    if not args.skip_chart:
        measure_chart_cost()


if __name__ == "__main__":
    main()
