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


class FakeNvml:
    """A stand-in for the pynvml module: one H200-like device, as NVML answered on a real one."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_FunctionNotFound(NVMLError):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    class NVMLError_Uninitialized(NVMLError):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    NVML_TEMPERATURE_GPU = 0
    nvmlMemory_v2 = 0x02000028

    def __init__(self, has_v2=True, mig=False):
        self.has_v2, self.mig, self.lost = has_v2, mig, False
        self.processes = [(438, 5_211_422_720), (999, 1 << 30)]

    def _check(self):
        if self.lost:
            raise self.NVMLError_GpuIsLost("GPU is lost")

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check()
        return index

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        self._check()
        total = 150_754_820_096
        if version is None:  # the first version counts the driver's reservation as used
            return type("Memory", (), {"total": total, "used": 5_856_362_496})()
        if not self.has_v2:
            raise self.NVMLError_FunctionNotFound("Function Not Found")
        return type("Memory", (), {"total": total, "used": 5_211_422_720})()

    def nvmlDeviceGetUtilizationRates(self, handle):
        if self.mig:
            raise self.NVMLError_NotSupported("Not Supported")
        return type("Rates", (), {"gpu": 100})()

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 59

    def nvmlDeviceGetPowerUsage(self, handle):
        return 691_000

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [type("Process", (), {"pid": p, "usedGpuMemory": m})() for p, m in self.processes]

    def nvmlDeviceGetMigMode(self, handle):
        if not self.mig:
            raise self.NVMLError_NotSupported("Not Supported")
        return (1, 1)


@pytest.fixture
def fake_nvml(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nvml)
    return nvml


def test_nvml_reads_memory_as_nvidia_smi_does_and_the_run_pids_alone(fake_nvml):
    device = NvmlSource().sample([438]).devices[0]
    assert device.name == "NVIDIA H200"
    assert device.memory_used == 5_211_422_720  # the second version: reserved memory apart
    assert (device.utilization, device.temperature, device.power) == (100, 59, 691.0)
    assert device.process_memory == 5_211_422_720  # pid 999's GiB is not this run's
    assert device.mig is False


def test_nvml_falls_back_to_the_first_memory_call_on_an_old_driver(fake_nvml):
    fake_nvml.has_v2 = False
    assert NvmlSource().sample().devices[0].memory_used == 5_856_362_496


def test_nvml_on_a_mig_device_leaves_utilisation_unknown(fake_nvml):
    fake_nvml.mig = True
    device = NvmlSource().sample().devices[0]
    assert device.mig is True and device.utilization is None


def test_nvml_lost_gpu_is_an_error_then_retried(fake_nvml):
    source = NvmlSource()
    fake_nvml.lost = True
    sample = source.sample()
    assert sample.devices == [] and "GPU is lost" in sample.error and "retrying" in sample.error
    fake_nvml.lost = False
    assert source.sample().devices[0].name == "NVIDIA H200"


async def test_recording_from_a_real_h200_under_load():
    # Recorded by benchmarks/gpu_real_check.py on an H200 with a process holding 4.9 GiB.
    text, panel = await polled(recording("h200_real"), polls=3, pids=(439,))
    assert "0 H200" in text
    assert "4.9G/140.4G" in text and "run 4.9G" in text
    assert "100%" in text and "°C" in text and "W" in text
    assert panel.sample.devices[0].power_limit == 700.0


def test_nvml_per_process_memory_hidden_by_the_driver_is_unknown_not_zero(fake_nvml):
    fake_nvml.processes = [(438, None)]
    assert NvmlSource().sample([438]).devices[0].process_memory is None
    assert NvmlSource().sample([7]).devices[0].process_memory == 0  # not on this GPU at all
