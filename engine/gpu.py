"""One small interface to the GPUs: NVML for real, recorded samples for tests.

A :class:`GpuSource` has one method, ``sample(pids)``, returning a
:class:`GpuSample`: per device its name, memory, utilisation, temperature,
power and the memory of the given processes. ``sample`` never raises:

- with no NVIDIA driver the sample is ``unavailable`` with the reason in one
  line, and carries the host's CPU and memory (psutil) instead;
- an NVML error mid-run sets ``error`` and the next call tries again;
- a value NVML cannot report (utilisation on a MIG device) is ``None``.

TF-free and UI-free; ``sample`` blocks for a few milliseconds, so callers
poll it from a thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

GIB = 1 << 30


@dataclass(frozen=True)
class GpuDevice:
    """One device as NVML sees it (memory in bytes, power in watts)."""

    index: int
    name: str
    memory_used: int
    memory_total: int
    utilization: int | None = None
    temperature: int | None = None
    power: float | None = None
    power_limit: float | None = None
    process_memory: int | None = None
    mig: bool = False


@dataclass(frozen=True)
class HostStats:
    """The host's CPU and memory, shown when there is no GPU to show."""

    cpu_percent: float
    cpu_count: int
    memory_used: int
    memory_total: int
    process_memory: int | None = None


@dataclass(frozen=True)
class GpuSample:
    """One poll of every device.

    Attributes:
        devices: the devices read this time (empty when unavailable or failed).
        unavailable: why there are no GPUs at all (no driver), else None.
        error: an NVML failure of this poll (the next poll retries), else None.
        host: host CPU and memory, filled when ``unavailable``.
        time: when the sample was taken (seconds since the epoch).
    """

    devices: list[GpuDevice] = field(default_factory=list)
    unavailable: str | None = None
    error: str | None = None
    host: HostStats | None = None
    time: float = 0.0

    def to_dict(self) -> dict:
        """Plain data for a JSON recording."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GpuSample:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        devices = [GpuDevice(**_known(GpuDevice, d)) for d in data.get("devices", [])]
        host = data.get("host")
        return cls(
            devices=devices,
            unavailable=data.get("unavailable"),
            error=data.get("error"),
            host=HostStats(**_known(HostStats, host)) if host else None,
            time=float(data.get("time", 0.0)),
        )


def _known(kind: type, data: dict) -> dict:
    return {key: value for key, value in data.items() if key in kind.__dataclass_fields__}


class GpuSource(Protocol):
    """Anything that can be polled for GPU samples."""

    def sample(self, pids: Sequence[int] = ()) -> GpuSample:
        """Read every device now; ``pids`` are the processes whose memory to report."""
        ...


def host_stats(pids: Sequence[int] = ()) -> HostStats:
    """CPU and memory of the host, and the resident memory of ``pids``."""
    import psutil

    memory = psutil.virtual_memory()
    return HostStats(
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or 1,
        memory_used=memory.total - memory.available,
        memory_total=memory.total,
        process_memory=_resident_memory(pids) if pids else None,
    )


def _resident_memory(pids: Sequence[int]) -> int | None:
    import psutil

    total, found = 0, False
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
            found = True
        except (psutil.Error, OSError):
            continue
    return total if found else None


class NvmlSource:
    """Samples the real GPUs through NVML (the nvidia-ml-py package)."""

    def __init__(self) -> None:
        self._ready = False
        self._unavailable: str | None = None
        """Why there can be no GPU until the program restarts (no package, no driver library)."""

    def sample(self, pids: Sequence[int] = ()) -> GpuSample:
        """Read every device; never raises (see the module docstring)."""
        now = time.time()
        if not self._ready:
            reason = self._unavailable or self._init()
            if reason:
                return GpuSample(unavailable=reason, host=host_stats(pids), time=now)
        try:
            return GpuSample(devices=self._read_devices(pids), time=now)
        except Exception as error:  # noqa: BLE001 - any NVML failure becomes a line
            self._shutdown()
            return GpuSample(error=f"NVML error: {_one_line(error)}; retrying", time=now)

    def _init(self) -> str | None:
        """Start NVML; the reason there is no GPU when it cannot start."""
        try:
            import pynvml
        except ImportError:
            self._unavailable = "No NVIDIA GPU: the nvidia-ml-py package is not installed"
            return self._unavailable
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            reason = f"No NVIDIA GPU: {_init_reason(pynvml, error)}"
            if isinstance(error, pynvml.NVMLError_LibraryNotFound):
                self._unavailable = reason  # no driver library: polling again cannot find one
            return reason
        except Exception as error:  # noqa: BLE001 - a broken driver must not crash the UI
            return f"No NVIDIA GPU: {_one_line(error)}"
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                pynvml.nvmlShutdown()
                return "No NVIDIA GPU: the driver is loaded but reports no devices"
        except pynvml.NVMLError as error:
            return f"No NVIDIA GPU: {_one_line(error)}"
        self._ready = True
        return None

    def _shutdown(self) -> None:
        self._ready = False
        try:
            import pynvml

            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - already broken; the next poll re-inits
            pass

    def _read_devices(self, pids: Sequence[int]) -> list[GpuDevice]:
        import pynvml

        return [_read_device(pynvml, index, pids) for index in range(pynvml.nvmlDeviceGetCount())]


def _read_device(pynvml: Any, index: int, pids: Sequence[int]) -> GpuDevice:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = _memory_info(pynvml, handle)
    name = pynvml.nvmlDeviceGetName(handle)
    return GpuDevice(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_used=int(memory.used),
        memory_total=int(memory.total),
        utilization=_optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        temperature=_optional(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        ),
        power=_optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        power_limit=_optional(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
        process_memory=_process_memory(pynvml, handle, pids),
        mig=bool(_optional(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0])),
    )


def _memory_info(pynvml: Any, handle: Any) -> Any:
    """Memory as nvidia-smi counts it.

    The first version of the call counts the driver's reserved memory as used
    (about 600 MiB on an idle H200 that nvidia-smi shows at 0 MiB); the second
    reports it apart. Drivers older than the second fall back to the first.
    """
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except pynvml.NVMLError as error:
            if isinstance(error, (pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_Uninitialized)):
                raise
    return pynvml.nvmlDeviceGetMemoryInfo(handle)


def _optional(read: Any) -> Any:
    """A value NVML may not support on this device (MIG, some boards): None then."""
    import pynvml

    try:
        return read()
    except pynvml.NVMLError_NotSupported:
        return None
    except pynvml.NVMLError as error:
        # A lost GPU or a dead driver must surface as a poll error, not a blank.
        if isinstance(error, (pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_Uninitialized)):
            raise
        return None


def _process_memory(pynvml: Any, handle: Any, pids: Sequence[int]) -> int | None:
    if not pids:
        return None
    try:
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return None
    wanted = set(pids)
    used = [p.usedGpuMemory for p in processes if p.pid in wanted]
    if used and all(memory is None for memory in used):
        return None  # the driver hides per-process memory (some containers): unknown, not 0
    return sum(memory or 0 for memory in used)


def _init_reason(pynvml: Any, error: Exception) -> str:
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        return "NVML could not load libnvidia-ml.so.1 (no NVIDIA driver installed)"
    if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
        return "the NVIDIA driver is not loaded"
    if isinstance(error, pynvml.NVMLError_NoPermission):
        return "no permission to talk to the NVIDIA driver"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class RecordedSource:
    """Replays recorded samples, one per ``sample`` call, then repeats the last.

    Args:
        samples: the recording, as :class:`GpuSample` objects or their dicts.
        loop: start again from the first sample after the last.
    """

    def __init__(self, samples: Sequence[GpuSample | dict], loop: bool = False) -> None:
        if not samples:
            raise ValueError("a recording needs at least one sample")
        self.samples = [s if isinstance(s, GpuSample) else GpuSample.from_dict(s) for s in samples]
        self.loop = loop
        self.calls = 0
        self.pids_seen: list[tuple[int, ...]] = []

    @classmethod
    def from_file(cls, path: str | Path, loop: bool = False) -> RecordedSource:
        """Load a JSON recording: ``{"samples": [...]}`` or a bare list."""
        data = json.loads(Path(path).read_text())
        return cls(data["samples"] if isinstance(data, dict) else data, loop=loop)

    def sample(self, pids: Sequence[int] = ()) -> GpuSample:
        """The next recorded sample."""
        index = self.calls % len(self.samples) if self.loop else self.calls
        self.calls += 1
        self.pids_seen.append(tuple(pids))
        return self.samples[min(index, len(self.samples) - 1)]


def record(source: GpuSource, count: int, interval: float = 1.0, pids: Sequence[int] = ()) -> dict:
    """Poll ``source`` ``count`` times and return a recording for :class:`RecordedSource`."""
    samples = []
    for index in range(count):
        if index:
            time.sleep(interval)
        samples.append(source.sample(pids).to_dict())
    return {"samples": samples}


if __name__ == "__main__":  # python -m engine.gpu [COUNT] > recording.json
    import sys

    print(json.dumps(record(NvmlSource(), int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
