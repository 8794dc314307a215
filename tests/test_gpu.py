"""engine.gpu and the GPU panel, driven by recorded NVML samples."""

import threading
import time
from pathlib import Path

import pytest
from textual.app import App

from engine.gpu import GpuDevice, GpuSample, NvmlSource, RecordedSource
from tui.widgets.gpu_panel import GpuPanel

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"


def recording(name: str) -> RecordedSource:
    return RecordedSource.from_file(FIXTURES / f"{name}.json")


class PanelApp(App):
    def __init__(self, source, interval=0.01):
        super().__init__()
        self.source, self.interval = source, interval

    def compose(self):
        yield GpuPanel(self.source, interval=self.interval)


async def polled(source, polls: int, size=(100, 14), pids=()):
    """Run a panel until it has taken ``polls`` samples; return its text and the panel."""
    app = PanelApp(source)
    async with app.run_test(size=size) as pilot:
        panel = app.query_one(GpuPanel)
        panel.pids = pids
        deadline = time.monotonic() + 5
        while panel.polls < polls and time.monotonic() < deadline:
            await pilot.pause(0.01)
        return panel.render().plain, panel


def test_sample_round_trips_through_json():
    sample = GpuSample(devices=[GpuDevice(0, "A", 1, 2, utilization=None)], error="x", time=3.0)
    assert GpuSample.from_dict(sample.to_dict()) == sample


def test_recorded_source_replays_then_holds_the_last_sample():
    source = recording("errors_mid_run")
    results = [source.sample((7,)) for _ in range(7)]
    assert results[2].error and not results[2].devices
    assert results[6] == results[4]
    assert source.pids_seen[0] == (7,)


def test_nvml_without_a_driver_says_why_in_one_line_and_reads_the_host():
    sample = NvmlSource().sample()
    if sample.devices:
        pytest.skip("this machine has an NVIDIA GPU")
    assert sample.unavailable.startswith("No NVIDIA GPU: ")
    assert "\n" not in sample.unavailable
    assert sample.host is not None and sample.host.memory_total > 0


async def test_one_gpu():
    text, panel = await polled(recording("one_gpu"), 3, pids=(4242,))
    assert "H100 80GB HBM3" in text and "70%" in text and "62°C" in text and "350W" in text
    assert "run 18.0G" in text
    assert panel.source.pids_seen[-1] == (4242,)
    assert not panel.has_class("-error") and not panel.has_class("-no-gpu")


async def test_eight_gpus_one_line_each():
    text, panel = await polled(recording("eight_gpus"), 2, size=(100, 20))
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 8
    assert [line.split()[0] for line in lines] == [str(i) for i in range(8)]
    assert panel.border_title == "GPU · 8"


async def test_mig_device_without_utilisation():
    text, _ = await polled(recording("mig"), 2)
    assert "MIG" in text
    assert "  -%" in text  # NVML cannot report utilisation on a MIG slice
    assert "run 12.0G" in text


async def test_nvml_errors_mid_run_are_shown_and_retried():
    source = recording("errors_mid_run")
    app = PanelApp(source)
    async with app.run_test(size=(100, 10)) as pilot:
        panel = app.query_one(GpuPanel)
        seen_error = None
        deadline = time.monotonic() + 5
        while panel.polls < 5 and time.monotonic() < deadline:
            await pilot.pause(0.005)
            if panel.has_class("-error"):
                seen_error = panel.render().plain
        assert seen_error is not None and "NVML error" in seen_error
        assert "20.0G" in seen_error or "22.0G" in seen_error  # last good values, dimmed
        assert not panel.has_class("-error")  # recovered on the retry
        assert "24.0G" in panel.render().plain


async def test_no_gpu_shows_the_reason_and_the_host():
    text, panel = await polled(recording("no_gpu"), 1)
    assert text.splitlines()[0].startswith("No NVIDIA GPU: NVML could not load libnvidia-ml.so.1")
    assert "CPU  37% of 16" in text and "21.3G/125.7G" in text
    assert panel.has_class("-no-gpu")


async def test_a_source_that_raises_does_not_stop_polling():
    class Flaky:
        calls = 0

        def sample(self, pids=()):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("driver exploded")
            return GpuSample(devices=[GpuDevice(0, "X", 1 << 30, 2 << 30, 5)])

    text, panel = await polled(Flaky(), 2)
    assert "1.0G/2.0G" in text


async def test_polls_never_overlap():
    class Slow:
        def __init__(self):
            self.active, self.most, self.calls = 0, 0, 0
            self.lock = threading.Lock()

        def sample(self, pids=()):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
                self.calls += 1
            time.sleep(0.03)
            with self.lock:
                self.active -= 1
            return GpuSample(devices=[])

    source = Slow()
    app = PanelApp(source, interval=0.0)
    async with app.run_test() as pilot:
        panel = app.query_one(GpuPanel)
        for _ in range(20):
            panel.poll()  # extra requests while one is in flight are ignored
            await pilot.pause(0.01)
    assert source.calls >= 3
    assert source.most == 1
