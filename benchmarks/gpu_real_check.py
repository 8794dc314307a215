"""Checks the GPU panel against a real NVIDIA GPU; needs no TensorFlow.

Run it on a machine with an NVIDIA driver (it is how the panel was checked on
an H200). It prints, and exits 1 if any check fails:

1. what ``nvidia-smi`` reports beside what :class:`engine.gpu.NvmlSource`
   reads: name, memory used/total, utilisation, temperature, power;
2. with a load process that takes about ``--load-gib`` GiB and keeps the GPU
   busy (PyTorch, else CuPy): the memory NVML gives for that pid alone (the
   panel's "run" figure) against nvidia-smi's, and the utilisation rising;
3. what one poll costs (p50 / p95 ms over ``--polls`` polls), since polls run
   once a second in a thread of the UI process;
4. the app itself, attached to a fake run whose worker pid is the load
   process, drawn headless at 80x24 and 160x48 with the real NVML source:
   the GPU panel's lines are printed and SVG screenshots written to ``--out``;
5. a recording of the loaded GPU for tests (``--out``/gpu_recording.json).

Usage: python benchmarks/gpu_real_check.py [--out DIR] [--load-gib 4] [--polls 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.gpu import NvmlSource, record  # noqa: E402

LOAD_PROGRAM = """
import sys, time
gib, seconds = float(sys.argv[1]), float(sys.argv[2])
try:
    import torch
    hold = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device="cuda")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    def work():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
except ImportError:
    import cupy
    hold = cupy.empty(int(gib * 2**30) // 4, dtype=cupy.float32)
    a = cupy.random.rand(8192, 8192, dtype=cupy.float32)
    def work():
        for _ in range(5):
            a @ a
        cupy.cuda.Device().synchronize()
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    work()
"""

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        failures.append(what)


def smi_devices() -> list[dict]:
    fields = "name,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit"
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = []
    for line in out.strip().splitlines():
        name, used, total, util, temp, power, limit = [v.strip() for v in line.split(",")]
        rows.append({"name": name, "used_mib": float(used), "total_mib": float(total),
                     "util": util, "temp": temp, "power": power, "limit": limit})
    return rows


def smi_process_mib(pid: int) -> float | None:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True,
    ).stdout
    for line in out.strip().splitlines():
        found, used = [v.strip() for v in line.split(",")]
        if found == str(pid):
            return float(used)
    return None


def compare_idle(source: NvmlSource) -> None:
    print("1. nvidia-smi against NvmlSource (idle)")
    started = time.perf_counter()
    sample = source.sample()
    print(f"  first poll (NVML init) {1000 * (time.perf_counter() - started):.0f} ms")
    smi = smi_devices()
    print(f"  nvidia-smi: {smi}")
    print(f"  NvmlSource: {[d.__dict__ for d in sample.devices]}")
    check(sample.unavailable is None and sample.error is None, "NVML available, no error")
    check(len(sample.devices) == len(smi), f"{len(sample.devices)} device(s), as nvidia-smi")
    for device, row in zip(sample.devices, smi, strict=False):
        check(device.name == row["name"], f"name {device.name!r}")
        mib = device.memory_total / (1 << 20)
        check(abs(mib - row["total_mib"]) <= 1, f"memory total {mib:.0f} MiB vs {row['total_mib']:.0f}")
        used = device.memory_used / (1 << 20)
        check(abs(used - row["used_mib"]) <= 64, f"memory used {used:.0f} MiB vs {row['used_mib']:.0f}")
        check(device.utilization is not None, f"utilisation read: {device.utilization}")
        check(device.temperature is not None, f"temperature read: {device.temperature}")
        check(device.power is not None and device.power > 0, f"power read: {device.power}")
        check(device.mig is False, "not a MIG device")


def start_load(gib: float, seconds: float) -> subprocess.Popen:
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD_PROGRAM, str(gib), str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    line = load.stdout.readline() if load.stdout else ""
    if line.strip() != "ready":
        raise SystemExit(f"the load process did not start (said {line!r})")
    return load


def check_loaded(source: NvmlSource, load: subprocess.Popen, gib: float) -> None:
    print(f"2. a load process (pid {load.pid}) holding {gib} GiB and multiplying matrices")
    time.sleep(2)  # let utilisation, averaged by the driver over a second or so, rise
    sample = source.sample([load.pid])
    device = sample.devices[0]
    smi_mib = smi_process_mib(load.pid)
    run_mib = None if device.process_memory is None else device.process_memory / (1 << 20)
    print(f"  NVML for pid: {run_mib} MiB; nvidia-smi for pid: {smi_mib} MiB")
    used, smi_used = device.memory_used / (1 << 20), smi_devices()[0]["used_mib"]
    check(abs(used - smi_used) <= 64, f"device memory used {used:.0f} MiB vs nvidia-smi {smi_used:.0f}")
    check(run_mib is not None and run_mib >= gib * 1024, f"the run's memory covers its {gib} GiB")
    check(smi_mib is None or abs((run_mib or 0) - smi_mib) <= 2, "the run's memory matches nvidia-smi")
    check((device.utilization or 0) >= 50, f"utilisation under load {device.utilization}%")
    other = source.sample([load.pid + 100000]).devices[0].process_memory
    check(other == 0, f"another pid's memory is 0, not the whole GPU's ({other})")


def poll_cost(source: NvmlSource, pid: int, polls: int) -> None:
    print(f"3. cost of one poll, {polls} polls with a pid")
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        source.sample([pid])
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"  p50 {statistics.median(times):.2f} ms, p95 {p95:.2f} ms, max {times[-1]:.2f} ms")
    check(p95 < 100, "p95 under 100 ms (a poll runs once a second, in a thread)")


async def draw_app(pid: int, out: Path) -> None:
    from tests.fake_engine import FakeEngine, FakeRun, make_preset, run_started, training_events
    from tui.app import ConvdeckApp
    from tui.widgets.gpu_panel import GpuPanel

    print("4. the app, attached to a fake run whose worker is the load process, real NVML")
    config = make_preset("lenet5-digits").config
    start = time.time() - 300
    first = run_started("gpu-check", config, now=start, steps_per_epoch=1000)
    first["pid"] = pid
    history = [first] + training_events(3000, steps_per_epoch=1000, now=start, step_time=0.1)
    for size in ((80, 24), (160, 48)):
        engine = FakeEngine(runs=[FakeRun("gpu-check", config, history=history)])
        app = ConvdeckApp(engine=engine, gpu_source=NvmlSource(), attach="gpu-check")
        async with app.run_test(size=size) as pilot:
            panel = app.query_one(GpuPanel)
            deadline = time.time() + 15
            while panel.polls < 3 and time.time() < deadline:
                await pilot.pause(0.2)
            lines = [line.plain for line in panel._lines(panel.content_size.width)]
            print(f"  {size[0]}x{size[1]}, after {panel.polls} polls, pids {panel.pids}:")
            for line in lines:
                print(f"    |{line}")
            check(panel.polls >= 3, "the panel polled once a second")
            check(panel.pids == (pid,), "the panel asks for the run's worker pid")
            check(any(" run " in line for line in lines), "the panel shows the run's own memory")
            name = f"app_{size[0]}x{size[1]}.svg"
            app.save_screenshot(filename=name, path=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--load-gib", type=float, default=4.0)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CONVDECK_HOME", tempfile.mkdtemp(prefix="convdeck-gpu-check-"))

    source = NvmlSource()
    compare_idle(source)
    if failures and not source.sample().devices:
        raise SystemExit("no GPU to check against")
    load = start_load(args.load_gib, seconds=120)
    try:
        check_loaded(source, load, args.load_gib)
        poll_cost(source, load.pid, args.polls)
        recording = record(source, count=8, interval=1.0, pids=[load.pid])
        (args.out / "gpu_recording.json").write_text(json.dumps(recording, indent=1) + "\n")
        print(f"5. recording of {len(recording['samples'])} samples written")
        asyncio.run(draw_app(load.pid, args.out))
    finally:
        load.terminate()
        load.wait(timeout=30)
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    for what in failures:
        print(f"  - {what}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
