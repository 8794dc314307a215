"""Prevention: the memory estimate and the check against NVML (fit-batch: test_fitbatch.py).

The estimate is checked against what Keras and TensorFlow say of two real
models (LeNet-5 and ResNet-18 at 32x32): the parameter count, and the size
of every layer's output tensor from an actual forward pass. The GPU side is
driven by recorded NVML samples.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from conftest import event_dicts

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
