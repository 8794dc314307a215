"""Prevention: the memory estimate, the check against NVML, and ``convdeck fit-batch``.

The estimate is checked against what Keras and TensorFlow say of two real
models (LeNet-5 and ResNet-18 at 32x32): the parameter count, and the size
of every layer's output tensor from an actual forward pass. The GPU side is
driven by recorded NVML samples; fit-batch's search by a fake trial, and
end to end against an injected limit (``oom:batch_size>N``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from conftest import event_dicts, run_cli

from engine import fitbatch
from engine.config import ModelConfig, RunConfig
from engine.gpu import GpuDevice, GpuSample, RecordedSource
from engine.models import build_model
from engine.run.events import EventWriter
from engine.train.memory import (
    GIB,
    MIB,
    estimate_memory,
    free_gpu_bytes,
    memory_budget,
    memory_check,
    nice_batch,
    warn_if_memory_short,
)

FIXTURES = Path(__file__).parent / "fixtures" / "nvml"
BATCH = 8


@pytest.fixture(scope="module")
def lenet5():
    return build_model(ModelConfig(arch="lenet5"), (32, 32, 1), 10)


@pytest.fixture(scope="module")
def resnet18():
    return build_model(ModelConfig(arch="resnet", blocks=[2, 2, 2, 2]), (32, 32, 3), 10)


@pytest.fixture
def float32_policy():
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def real_activation_bytes(model, batch: int) -> int:
    """Bytes of every counted layer's output in a real forward pass, plus the input batch."""
    counted = [
        layer.output
        for layer in model.layers
        if type(layer).__name__ not in ("InputLayer", "Flatten", "Reshape")
    ]
    probe = keras.Model(model.inputs, counted)
    images = np.zeros((batch, *model.input_shape[1:]), "float32")
    outputs = probe(images, training=True)
    kept = sum(math.prod(t.shape) * t.dtype.size for t in outputs)
    return kept + images.nbytes


# ----- the estimate against real models ------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_weights_and_activations_match_the_real_model(name, request):
    model = request.getfixturevalue(name)
    estimate = estimate_memory(model, BATCH)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert estimate.parameters == model.count_params()
    assert estimate.trainable_parameters == trainable
    assert estimate.weights_bytes == 4 * model.count_params()  # float32 variables
    assert estimate.gradient_bytes == 4 * trainable
    assert estimate.optimizer_bytes == 2 * 4 * trainable  # adam: m and v
    assert estimate.activation_bytes == real_activation_bytes(model, BATCH)
    assert estimate.total_bytes == (
        estimate.weights_bytes
        + estimate.optimizer_bytes
        + estimate.gradient_bytes
        + estimate.activation_bytes
        + estimate.workspace_bytes
    )


def test_resnet18_figures_are_the_known_ones(resnet18):
    estimate = estimate_memory(resnet18, 128)
    assert estimate.parameters == 11_183_562  # ResNet-18 with a 10-class head
    # BatchNorm's moving mean and variance are weights, not trainable.
    assert estimate.parameters - estimate.trainable_parameters == 2 * sum(
        w.shape[0] for w in resnet18.weights if "moving_mean" in w.path
    )
    # 32x32 images: the stem and the first stage keep 13 maps of 128x32x32x64 floats.
    assert 13 * 128 * 32 * 32 * 64 * 4 < estimate.activation_bytes < 2 * GIB


def test_lenet5_is_dominated_by_activations_not_weights(lenet5):
    estimate = estimate_memory(lenet5, 256)
    assert estimate.weights_bytes < 1 * MIB
    assert estimate.activation_bytes > 10 * estimate.weights_bytes


@pytest.mark.parametrize(
    ("optimizer", "momentum", "slots"),
    [("adam", 0.9, 2), ("adamw", 0.9, 2), ("sgd", 0.9, 1), ("sgd", 0.0, 0)],
)
def test_optimizer_slots(lenet5, optimizer, momentum, slots):
    estimate = estimate_memory(lenet5, BATCH, optimizer_name=optimizer, momentum=momentum)
    assert estimate.optimizer_bytes == slots * 4 * estimate.trainable_parameters


def test_accumulation_keeps_a_second_set_of_gradients(lenet5):
    one = estimate_memory(lenet5, BATCH)
    two = estimate_memory(lenet5, BATCH, accumulation_steps=2)
    assert two.gradient_bytes == 2 * one.gradient_bytes


def test_mixed_precision_halves_the_activations_of_a_mixed_model(float32_policy):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = build_model(ModelConfig(arch="resnet", blocks=[1, 1]), (32, 32, 3), 10)
    mixed = estimate_memory(model, BATCH, "mixed_bfloat16")
    assert mixed.activation_bytes == real_activation_bytes(model, BATCH)
    assert mixed.weights_bytes == 4 * model.count_params()  # variables stay float32
    keras.mixed_precision.set_dtype_policy("float32")
    plain = estimate_memory(
        build_model(ModelConfig(arch="resnet", blocks=[1, 1]), (32, 32, 3), 10), BATCH
    )
    assert mixed.activation_bytes == pytest.approx(plain.activation_bytes / 2, rel=0.05)
    # Asking about mixed precision for a float32 model predicts the same halving.
    predicted = estimate_memory(
        build_model(ModelConfig(arch="resnet", blocks=[1, 1]), (32, 32, 3), 10),
        BATCH,
        "mixed_float16",
    )
    assert predicted.activation_bytes == pytest.approx(mixed.activation_bytes, rel=0.01)


def test_the_estimate_is_linear_in_the_batch(resnet18):
    small, big = estimate_memory(resnet18, 8), estimate_memory(resnet18, 64)
    assert big.activation_bytes == 8 * small.activation_bytes
    assert big.fixed_bytes == small.fixed_bytes
    assert small.for_batch(64) == big


def test_largest_batch_is_the_edge_of_the_budget(resnet18):
    estimate = estimate_memory(resnet18, 128)
    budget = 2 * GIB
    largest = estimate.largest_batch(budget)
    assert largest > 0
    assert estimate.for_batch(largest).total_bytes <= budget
    assert estimate.for_batch(largest + 1).total_bytes > budget
    assert estimate.largest_batch(estimate.fixed_bytes) == 0  # no room for one example


def test_a_bad_batch_is_refused(lenet5):
    with pytest.raises(ValueError, match="batch_size"):
        estimate_memory(lenet5, 0)


# ----- against the GPU's free memory -----------------------------------------------------------


def test_free_memory_comes_from_nvml_recordings(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    one = RecordedSource.from_file(FIXTURES / "one_gpu.json")
    device = one.samples[0].devices[0]
    assert free_gpu_bytes(one) == device.memory_total - device.memory_used
    assert free_gpu_bytes(RecordedSource.from_file(FIXTURES / "no_gpu.json")) is None
    broken = RecordedSource([GpuSample(error="NVML error: GPU is lost; retrying")])
    assert free_gpu_bytes(broken) is None


def test_free_memory_is_the_visible_devices(monkeypatch):
    devices = [
        GpuDevice(index=i, name="GPU", memory_used=i * GIB, memory_total=80 * GIB) for i in range(4)
    ]
    source = RecordedSource([GpuSample(devices=devices)], loop=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert free_gpu_bytes(source) == 78 * GIB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3b6c-uuid")
    assert free_gpu_bytes(source) == 80 * GIB  # a UUID: the first device


def test_check_is_quiet_when_it_fits_or_without_a_gpu(resnet18):
    estimate = estimate_memory(resnet18, 32)
    assert memory_check(estimate, None) is None
    assert memory_check(estimate, 80 * GIB) is None


def test_check_warns_with_the_largest_batch_predicted_to_fit(resnet18):
    estimate = estimate_memory(resnet18, 1024)
    free = 4 * GIB
    warning = memory_check(estimate, free)
    assert warning is not None
    assert warning["estimate_bytes"] == estimate.total_bytes
    assert warning["free_bytes"] == free and warning["batch_size"] == 1024
    largest = estimate.largest_batch(memory_budget(free))
    assert warning["suggested_batch_size"] == nice_batch(largest) > 0
    assert estimate.for_batch(warning["suggested_batch_size"]).total_bytes <= memory_budget(free)
    assert f"train.batch_size = {warning['suggested_batch_size']}" in warning["message"]


def test_check_says_when_not_even_batch_one_fits(resnet18):
    warning = memory_check(estimate_memory(resnet18, 32), 900 * MIB)
    assert warning["suggested_batch_size"] == 0
    assert "even batch 1" in warning["message"]


def test_worker_hook_emits_memory_warning(tmp_path, resnet18):
    trainer = SimpleNamespace(
        model=resnet18,
        policy="float32",
        config=RunConfig.model_validate({"train": {"batch_size": 4096}}),
    )
    with EventWriter(tmp_path / "events.jsonl") as events:
        assert warn_if_memory_short(trainer, None, events) is None  # no GPU: nothing
        warning = warn_if_memory_short(trainer, 8 * GIB, events)
    written = event_dicts(tmp_path / "events.jsonl")
    assert [e["type"] for e in written] == ["memory_warning"]
    event = written[0]
    for name in ("estimate_bytes", "free_bytes", "batch_size", "suggested_batch_size"):
        assert event[name] == warning[name]
    assert event["batch_size"] == 4096 and 0 < event["suggested_batch_size"] < 4096
    assert f"train.batch_size = {event['suggested_batch_size']}" in event["message"]


def test_worker_hook_reads_a_real_trainer(tmp_path):
    from engine.presets import load_preset
    from engine.run.control import ControlState
    from engine.train.faults import parse_faults
    from engine.train.trainer import Trainer

    config = load_preset("lenet5-digits", ["data.image_size=[28, 28]", "train.batch_size=64"])
    with EventWriter(tmp_path / "events.jsonl") as events:
        trainer = Trainer(config, tmp_path, events, ControlState(), parse_faults(""))
        trainer.setup()
        assert warn_if_memory_short(trainer, 80 * GIB, events) is None  # plenty
        # 772 MiB free leaves 3.4 MiB after the runtime's reserve and the margin;
        # LeNet-5 at batch 64 wants about 5.4.
        warning = warn_if_memory_short(trainer, 772 * MIB, events)
    assert warning is not None and warning["batch_size"] == 64
    estimate = estimate_memory(trainer.model, 64)
    assert warning["estimate_bytes"] == estimate.total_bytes
    assert 0 < warning["suggested_batch_size"] < 64
    assert event_dicts(tmp_path / "events.jsonl")[-1]["type"] == "memory_warning"


def test_nice_batch():
    assert [nice_batch(b) for b in (1, 7, 63, 64, 71, 1000)] == [1, 7, 63, 64, 64, 1000]


# ----- fit-batch: the search ---------------------------------------------------------------------


def limit_at(largest: int, examples: int | None = None):
    """A fake trial: batches up to ``largest`` fit; records what was tried."""
    tried: list[int] = []

    def trial(batch: int) -> fitbatch.Trial:
        tried.append(batch)
        return fitbatch.Trial(batch, fits=batch <= largest, train_examples=examples)

    return trial, tried


def test_search_doubles_then_bisects():
    trial, tried = limit_at(100)
    result = fitbatch.search(trial, start=32, cap=4096)
    assert tried[:3] == [32, 64, 128]
    assert result.first_failure is not None and result.first_failure - result.largest <= 6
    assert 94 <= result.largest <= 100
    assert result.suggested == nice_batch(int(result.largest * 0.9))
    assert len(tried) <= 8


def test_search_halves_when_the_start_fails():
    trial, tried = limit_at(20)
    result = fitbatch.search(trial, start=128, cap=4096)
    assert tried[:4] == [128, 64, 32, 16]
    assert result.largest == 20 and result.first_failure == 21
    assert result.suggested == 18


def test_search_stops_at_the_cap_without_a_margin():
    trial, tried = limit_at(10_000)
    result = fitbatch.search(trial, start=100, cap=300)
    assert tried == [100, 200, 300]
    assert result.largest == 300 and not result.limited_by_memory and result.suggested == 300


def test_search_caps_at_the_training_set():
    trial, tried = limit_at(10_000, examples=1437)
    result = fitbatch.search(trial, start=512, cap=4096)
    assert tried == [512, 1024, 1437]
    assert result.cap == 1437 and result.suggested == 1437


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


def test_safe_batch():
    assert fitbatch.safe_batch(1) == 1
    assert fitbatch.safe_batch(40) == 36
    assert fitbatch.safe_batch(1000) == 896  # 900, rounded down to a multiple of 8
    assert fitbatch.safe_batch(512, limited_by_memory=False) == 512


def test_read_trial_tells_memory_from_other_failures():
    said = fitbatch.RESULT_PREFIX + json.dumps({"detail": "OOM when allocating"})
    assert not fitbatch.read_trial(8, 3, said, "", 1.0).fits
    assert not fitbatch.read_trial(8, 3, said, "", 1.0).error
    killed = fitbatch.read_trial(8, -9, "", "", 1.0)
    assert not killed.fits and not killed.error and "SIGKILL" in killed.detail
    cudnn = fitbatch.read_trial(8, 1, "", "... CUDNN_STATUS_ALLOC_FAILED\n", 1.0)
    assert not cudnn.fits and not cudnn.error
    bug = fitbatch.read_trial(8, 1, "", "Traceback...\nKeyError: 'x'\n", 1.0)
    assert bug.error and not bug.user_error and bug.detail == "KeyError: 'x'"
    user = fitbatch.read_trial(8, 2, fitbatch.RESULT_PREFIX + '{"detail": "bad field"}', "", 1.0)
    assert user.error and user.user_error and user.detail == "bad field"


# ----- fit-batch: the command, against an injected limit --------------------------------------

FIT = ["fit-batch", "lenet5-digits", "--set", "data.image_size=[28, 28]", "--steps", "1"]


def test_fit_batch_halves_below_an_injected_limit(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:batch_size>1")
    result = run_cli(*FIT, "--set", "train.batch_size=2", timeout=240)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["batch", "2", "out"] for line in lines), result.stdout
    assert any(line.split()[:3] == ["batch", "1", "fits"] for line in lines), result.stdout
    assert "largest batch that ran: 1 (batch 2 ran out of memory)" in result.stdout
    assert "suggested: train.batch_size = 1" in result.stdout


@pytest.mark.slow
def test_fit_batch_doubles_and_bisects_to_an_injected_limit(convdeck_home, monkeypatch):
    monkeypatch.setenv("CONVDECK_FAULTS", "oom:batch_size>6")
    result = run_cli(*FIT, "--set", "train.batch_size=4", "--max", "64", "--json", timeout=400)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    tried = [(line["trial"]["batch_size"], line["trial"]["fits"]) for line in lines[:-1]]
    assert tried == [(4, True), (8, False), (6, True), (7, False)]
    answer = lines[-1]["result"]
    assert answer["largest"] == 6 and answer["first_failure"] == 7 and answer["suggested"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max", "0"], "--max: got 0"),
        (["--steps", "0"], "--steps: got 0"),
        (["--set", "train.batch_size=-1"], "train.batch_size"),
    ],
)
def test_fit_batch_user_errors_exit_2(convdeck_home, args, message):
    from conftest import one_line_error

    assert message in one_line_error(run_cli("fit-batch", "lenet5-digits", *args))


def test_fit_batch_unknown_preset_exits_2(convdeck_home):
    from conftest import one_line_error

    assert "no-such-preset" in one_line_error(run_cli("fit-batch", "no-such-preset"))
