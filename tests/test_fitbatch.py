"""``convdeck fit-batch``: the mode, the memory search, throughput, and the command.

The search and the mode are driven by fake trials and fake NVML; the command
end to end by real trial processes on a CPU: throughput (``CUDA_VISIBLE_DEVICES=-1``
hides any GPU, so these tests mean the same on a GPU machine) and the memory
search against an injected limit (``CONVDECK_FAULTS=oom:batch_size>N``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import one_line_error, run_cli

from engine import fitbatch
from engine.config import RunConfig
from engine.gpu import RecordedSource

NVML = Path(__file__).parent / "fixtures" / "nvml"


def limit_at(largest: int, batch_limit: int | None = None, replicas: int = 1):
    """A fake trial: batches up to ``largest`` fit (faster as they grow); records what was tried."""
    tried: list[int] = []

    def trial(batch: int) -> fitbatch.Trial:
        tried.append(batch)
        if batch_limit is not None and batch > batch_limit:
            return fitbatch.Trial(batch, False, beyond_data=True, batch_limit=batch_limit)
        fits = batch <= largest
        speed = 1000.0 + batch if fits else None
        return fitbatch.Trial(batch, fits, images_per_sec=speed, batch_limit=batch_limit, replicas=replicas)

    return trial, tried


# ----- the memory search ------------------------------------------------------------------------


def test_search_doubles_then_bisects_to_a_size_that_is_no_power_of_two():
    trial, tried = limit_at(100)
    result = fitbatch.search(trial, start=32, cap=4096)
    assert tried[:3] == [32, 64, 128]
    assert tried[3:] == [96, 112, 104, 100]  # halves the bracket each time
    assert result.largest == 100 and result.first_failure == 104
    assert result.bound == fitbatch.BOUND_MEMORY
    assert result.suggested == 88  # 100 less 10%, down to a multiple of 8


def test_search_halves_when_the_start_fails():
    trial, tried = limit_at(20)
    result = fitbatch.search(trial, start=128, cap=4096)
    assert tried[:4] == [128, 64, 32, 16]
    assert result.largest == 20 and result.first_failure == 21
    assert result.suggested == 18


def test_headroom_is_the_users():
    trial, _ = limit_at(1000)
    result = fitbatch.search(trial, start=512, cap=4096, headroom=25)
    assert result.largest >= 1000 - 1000 // fitbatch.PRECISION
    assert result.suggested == fitbatch.suggest(result.largest, 25)
    assert result.suggested <= 0.75 * result.largest


def test_suggest():
    assert fitbatch.suggest(0) == 0
    assert fitbatch.suggest(1) == 1  # never below one batch
    assert fitbatch.suggest(6) == 5
    assert fitbatch.suggest(40) == 36
    assert fitbatch.suggest(1000) == 896  # 900, down to a multiple of 8
    assert fitbatch.suggest(1000, headroom=0) == 1000
    assert fitbatch.suggest(30, unit=4) == 24  # 27, down to a multiple of the replicas


def test_search_keeps_batches_a_multiple_of_the_replicas():
    trial, tried = limit_at(50, replicas=4)
    result = fitbatch.search(trial, start=8, cap=4096)
    assert all(batch % 4 == 0 for batch in tried), tried
    assert result.largest == 48 and result.first_failure == 52
    assert result.suggested % 4 == 0


def test_without_a_failure_below_the_cap_the_fastest_is_suggested():
    trial, tried = limit_at(10_000)
    result = fitbatch.search(trial, start=100, cap=300)
    assert tried == [100, 200, 300]
    assert not result.limited_by_memory and result.bound == fitbatch.BOUND_MAX
    assert result.fastest == 300 and result.suggested == 300


def test_search_never_passes_the_data():
    trial, tried = limit_at(10_000, batch_limit=1437)
    result = fitbatch.search(trial, start=512, cap=4096)
    assert tried == [512, 1024, 1437]
    assert result.cap == 1437 and result.bound == fitbatch.BOUND_DATA
    assert max(tried) == 1437


def test_a_start_beyond_the_data_tries_the_data_instead():
    trial, tried = limit_at(10_000, batch_limit=1437)
    result = fitbatch.search(trial, start=2048, cap=4096)
    assert tried == [2048, 1437]
    assert result.trials[0].beyond_data and result.largest == 1437


def test_search_when_nothing_fits():
    trial, tried = limit_at(0)
    result = fitbatch.search(trial, start=4, cap=64)
    assert tried == [4, 2, 1]
    assert result.largest == 0 and result.suggested == 0


def test_search_stops_at_an_error_that_is_not_memory():
    def trial(batch):
        return fitbatch.Trial(batch, fits=False, error=batch > 8, detail="ValueError: boom")

    result = fitbatch.search(trial, start=8, cap=64)
    assert [t.batch_size for t in result.trials] == [8, 4, 2, 1]
    result = fitbatch.search(lambda b: trial(b) if b > 8 else fitbatch.Trial(b, True), 8, 64)
    assert result.error is not None and result.error.batch_size == 16 and result.largest == 8


# ----- throughput and the mode ---------------------------------------------------------------


def test_throughput_sizes_stop_at_the_cap_and_the_data():
    assert fitbatch.throughput_sizes(32, 4096) == [32, 64, 128, 256]
    assert fitbatch.throughput_sizes(100, 4096) == [32, 64, 100, 128, 256]
    assert fitbatch.throughput_sizes(32, 100) == [32, 64, 100]
    assert fitbatch.sizes_within([64, 128, 256], 200) == [64, 128, 200]
    assert fitbatch.sizes_within([64, 128], 500) == [64, 128]
    assert fitbatch.batch_limit(1437, 1) == 1437
    assert fitbatch.batch_limit(1437, 4) == 359  # four batches a step
    assert fitbatch.batch_limit(1437, 1, replicas=2) == 1436


def test_the_median_skips_the_warm_up_step():
    steps = [{"images_per_sec": 5.0}, *({"images_per_sec": v} for v in (100, 300, 200, 900, 250))]
    assert fitbatch.median_images_per_sec(steps) == (250.0, 5)
    assert fitbatch.median_images_per_sec(steps[:1]) == (None, 0)


def test_a_configured_oom_fault_searches_as_if_there_were_device_memory(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    mode = fitbatch.choose_mode("oom:batch_size>6", RecordedSource.from_file(NVML / "no_gpu.json"))
    assert mode.name == fitbatch.MEMORY and mode.simulated and "oom:batch_size>6" in mode.reason


def test_mode_follows_nvml(monkeypatch):
    from test_gpu import FakeNvml

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml())
    mode = fitbatch.choose_mode("")  # the real NvmlSource, over the fake library
    assert mode.name == fitbatch.MEMORY and not mode.simulated and "NVIDIA H200" in mode.reason
    no_gpu = fitbatch.choose_mode("", RecordedSource.from_file(NVML / "no_gpu.json"))
    assert no_gpu.name == fitbatch.THROUGHPUT and "no nvidia gpu" in no_gpu.reason.lower()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    hidden = fitbatch.choose_mode("")
    assert hidden.name == fitbatch.THROUGHPUT and "CUDA_VISIBLE_DEVICES" in hidden.reason


class FakeProcesses:
    """Stands in for trial processes: records each process's sizes; ``gpus`` as TensorFlow's."""

    def __init__(self, largest: int = 10_000, gpus: int = 1) -> None:
        self.calls: list[list[int]] = []
        self.largest, self.gpus = largest, gpus

    def __call__(self, config, sizes, timed_steps, on_trial=None):
        self.calls.append(list(sizes))
        trials = []
        for batch in sizes:
            fits = batch <= self.largest
            trial = fitbatch.Trial(batch, fits, images_per_sec=float(batch) if fits else None)
            trial.gpus, trial.batch_limit = self.gpus, 1437
            trials.append(trial)
            if on_trial is not None:
                on_trial(trial)
        return trials


def test_memory_trials_get_a_process_each_and_throughput_one_for_all():
    config = RunConfig.model_validate({"train": {"batch_size": 32}})
    gpu = fitbatch.Mode(fitbatch.MEMORY, "GPU 0")
    processes = FakeProcesses(largest=100)
    result = fitbatch.find_batch(config, gpu, processes=processes)
    assert all(len(call) == 1 for call in processes.calls) and len(processes.calls) > 3
    assert result.mode == fitbatch.MEMORY and result.largest == 100
    cpu = fitbatch.Mode(fitbatch.THROUGHPUT, "no GPU")
    processes = FakeProcesses()
    result = fitbatch.find_batch(config, cpu, processes=processes)
    assert processes.calls == [[32, 64, 128, 256]]
    assert result.mode == fitbatch.THROUGHPUT and result.fastest == result.suggested == 256


def test_when_tensorflow_sees_no_gpu_throughput_is_measured_instead():
    config = RunConfig.model_validate({"train": {"batch_size": 32}})
    switched: list[str] = []
    processes = FakeProcesses(gpus=0)
    gpu = fitbatch.Mode(fitbatch.MEMORY, "GPU 0: NVIDIA H200")
    result = fitbatch.find_batch(config, gpu, on_switch=switched.append, processes=processes)
    assert processes.calls == [[32], [32, 64, 128, 256]]
    assert result.mode == fitbatch.THROUGHPUT and "TensorFlow sees no GPU" in result.reason
    assert switched == [result.reason]
    # A simulated limit needs no GPU: the search goes on.
    processes = FakeProcesses(largest=40, gpus=0)
    fault = fitbatch.Mode(fitbatch.MEMORY, "CONVDECK_FAULTS", simulated=True)
    assert fitbatch.find_batch(config, fault, processes=processes).largest == 40


# ----- reading trial processes -----------------------------------------------------------------


def test_read_trial_tells_memory_from_other_failures():
    said = fitbatch.RESULT_PREFIX + json.dumps({"batch_size": 8, "fits": False, "detail": "OOM"})
    assert not fitbatch.read_trial(8, 3, said, "", 1.0).fits
    assert not fitbatch.read_trial(8, 3, said, "", 1.0).error
    killed = fitbatch.read_trial(8, -9, "", "", 1.0)
    assert not killed.fits and not killed.error and "SIGKILL" in killed.detail
    cudnn = fitbatch.read_trial(8, 1, "", "... CUDNN_STATUS_ALLOC_FAILED\n", 1.0)
    assert not cudnn.fits and not cudnn.error
    bug = fitbatch.read_trial(8, 1, "", "Traceback...\nKeyError: 'x'\n", 1.0)
    assert bug.error and not bug.user_error and bug.detail == "KeyError: 'x'"
    silent = fitbatch.read_trial(8, 0, "", "", 1.0)
    assert silent.error and "without a report" in silent.detail


def test_trial_lines_carry_the_start_up_once():
    lines = [
        "TensorFlow says hello",
        fitbatch.RESULT_PREFIX + '{"ready": true}',
        fitbatch.RESULT_PREFIX + '{"batch_size": 32, "fits": true, "images_per_sec": 9.5}',
        fitbatch.RESULT_PREFIX + '{"batch_size": 64, "fits": true, "unknown_field": 1}',
    ]
    seen: list[fitbatch.Trial] = []
    trials = fitbatch._read_trials(io.StringIO("\n".join(lines)), 0.0, seen.append)
    assert seen == trials and [t.batch_size for t in trials] == [32, 64]
    assert trials[0].startup_seconds is not None and trials[1].startup_seconds is None
    assert trials[0].images_per_sec == 9.5


# ----- the command, end to end on a CPU ----------------------------------------------------------

FIT = ["fit-batch", "lenet5-digits", "--set", "data.image_size=[28, 28]"]


def test_fit_batch_without_a_gpu_measures_throughput_in_one_process(convdeck_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.delenv("CONVDECK_FAULTS", raising=False)
    # 17 training images: batch 32 is beyond the data, and 17 is measured instead.
    result = run_cli(*FIT, "--set", "data.validation_split=0.99", timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "no device memory to search" in out.splitlines()[0], out
    lines = [line.split() for line in out.splitlines() if line.startswith("  batch")]
    assert [line[1:3] for line in lines] == [["32", "beyond"], ["17", "fits"]], out
    assert "(median of 5)" in out and "img/s" in out
    assert "batch 17 is the most the training set (17 examples) allows" in out
    assert "suggested: train.batch_size = 17 (the fastest measured," in out
    assert "convdeck run lenet5-digits --set train.batch_size=17" in out
    assert "in 1 process:" in out


def test_fit_batch_halves_below_an_injected_limit(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:batch_size>1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # a simulated limit is searched without a GPU
    result = run_cli(*FIT, "--set", "train.batch_size=2", "--steps", "1", timeout=240)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "searching device memory (CONVDECK_FAULTS" in lines[0], result.stdout
    assert any(line.split()[:3] == ["batch", "2", "out"] for line in lines), result.stdout
    assert any(line.split()[:3] == ["batch", "1", "fits"] for line in lines), result.stdout
    assert "largest that fit: 1 (batch 2 ran out of memory)" in result.stdout
    assert "suggested: train.batch_size = 1 (largest that fit 1, minus 10% headroom)" in result.stdout
    assert "in 2 processes:" in result.stdout


@pytest.mark.slow
def test_fit_batch_doubles_and_bisects_to_an_injected_limit(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:batch_size>6")
    args = ["--set", "train.batch_size=4", "--max", "64", "--steps", "1", "--headroom", "20%"]
    result = run_cli(*FIT, *args, "--json", timeout=400)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    tried = [(line["trial"]["batch_size"], line["trial"]["fits"]) for line in lines[:-1]]
    assert tried == [(4, True), (8, False), (6, True), (7, False)]
    answer = lines[-1]["result"]
    assert answer["mode"] == "memory" and answer["headroom"] == 20.0
    assert answer["largest"] == 6 and answer["first_failure"] == 7 and answer["suggested"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max", "0"], "--max: got 0"),
        (["--steps", "0"], "--steps: got 0"),
        (["--headroom", "100"], "--headroom: got '100'"),
        (["--headroom", "ten"], "--headroom: got 'ten'"),
        (["--set", "train.batch_size=-1"], "train.batch_size"),
    ],
)
def test_fit_batch_user_errors_exit_2(convdeck_home, args, message):
    assert message in one_line_error(run_cli("fit-batch", "lenet5-digits", *args))


def test_fit_batch_unknown_preset_exits_2(convdeck_home):
    assert "no-such-preset" in one_line_error(run_cli("fit-batch", "no-such-preset"))


def test_a_process_that_dies_is_blamed_on_the_size_it_was_at():
    def trial(batch, limit=None):
        return fitbatch.Trial(batch, True, batch_limit=limit)

    assert fitbatch._pending([32, 64, 128], []) == [32, 64, 128]
    assert fitbatch._pending([32, 64, 128], [trial(32)]) == [64, 128]
    assert fitbatch._pending([32, 64, 128], [trial(32, 100)]) == [64, 100]
    beyond = fitbatch.Trial(32, False, beyond_data=True, batch_limit=17)
    assert fitbatch._pending([32, 64], [beyond]) == [17]
    assert fitbatch._pending([32, 64], [beyond, trial(17, 17)]) == []
