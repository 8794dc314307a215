"""Prevention: how much device memory a run will need, against what the GPU has free.

Before training, the worker estimates the memory one train step needs from
the built model, and compares it with the free memory NVML reported before
TensorFlow claimed the GPU. When the run will likely not fit it emits a
``memory_warning`` event with the largest batch predicted to fit.

The estimate, per replica, in bytes:

- **weights**: every variable of the model (trainable and not, e.g.
  BatchNorm's moving statistics), at its own dtype: variables stay float32
  under mixed precision.
- **optimizer slots**: per trainable parameter, Adam and AdamW keep two
  float32 slots (m and v), SGD with momentum one, plain SGD none.
- **gradients**: one float32 gradient per trainable parameter, and a second
  set for the running sum when gradients accumulate over micro-batches.
- **activations**: for every layer, its output shape x batch x the bytes of
  its compute dtype (2 under mixed precision), plus the input batch. This
  is what backprop keeps alive between the forward and the backward pass:
  each layer's gradient needs its input or its output, and for a chain of
  layers the sum of the outputs counts each kept tensor once. Layers that
  only reshape (Flatten, Reshape) are views of their input and are not
  counted again.
- **workspace**: twice the largest single layer output, for the gradient
  flowing back into a layer and the one it produces.

It leaves out what no layer shape shows: cuDNN workspaces, XLA's temporary
buffers, allocator fragmentation and the CUDA context. Those are covered by
the margin in :func:`memory_budget` rather than modelled. The estimate is
linear in the batch size, so the largest batch that fits is a division.

This module imports neither TensorFlow nor Keras at import time; the
estimate needs a built Keras model, so its caller has them loaded already.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
# Kept free of the estimate: the CUDA context, cuBLAS and cuDNN handles, and
# their workspaces, which NVML counts as the process's memory once it runs.
RUNTIME_RESERVE_BYTES = 768 * MIB
# Of the rest, only this much is planned for: fragmentation, XLA temporaries.
HEADROOM = 0.85
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 1}
# Layers whose output is a view of their input: no memory of their own.
VIEW_LAYERS = ("InputLayer", "Flatten", "Reshape")
_DTYPE_BYTES = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}


@dataclass(frozen=True)
class MemoryEstimate:
    """The device memory one train step needs, per replica, in bytes.

    Attributes:
        batch_size: the per-replica batch the figures are for.
        precision: the Keras dtype policy name (``float32``, ``mixed_float16``...).
        optimizer: the optimizer's name.
        parameters: every weight of the model (trainable and not).
        trainable_parameters: the weights the optimizer updates.
        weights_bytes: the model's variables.
        optimizer_bytes: the optimizer's slots.
        gradient_bytes: the gradients (two sets when accumulating).
        activation_bytes: layer outputs kept for backprop, and the input batch.
        workspace_bytes: the largest layer output twice (gradients in flight).
        layers: the number of layer outputs counted.
    """

    batch_size: int
    precision: str
    optimizer: str
    parameters: int
    trainable_parameters: int
    weights_bytes: int
    optimizer_bytes: int
    gradient_bytes: int
    activation_bytes: int
    workspace_bytes: int
    layers: int

    @property
    def fixed_bytes(self) -> int:
        """What does not grow with the batch: weights, optimizer slots, gradients."""
        return self.weights_bytes + self.optimizer_bytes + self.gradient_bytes

    @property
    def per_example_bytes(self) -> float:
        """What one more example in the batch costs."""
        return (self.activation_bytes + self.workspace_bytes) / self.batch_size

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.activation_bytes + self.workspace_bytes

    def for_batch(self, batch_size: int) -> MemoryEstimate:
        """The same model at another batch size (activations scale linearly)."""
        scale = batch_size / self.batch_size
        return MemoryEstimate(
            **{
                **asdict(self),
                "batch_size": batch_size,
                "activation_bytes": round(self.activation_bytes * scale),
                "workspace_bytes": round(self.workspace_bytes * scale),
            }
        )

    def largest_batch(self, budget_bytes: int) -> int:
        """The largest batch whose estimate stays within ``budget_bytes``; 0 if none."""
        room = budget_bytes - self.fixed_bytes
        if room <= 0 or self.per_example_bytes <= 0:
            return 0
        batch = int(room // self.per_example_bytes)
        # Rounding in for_batch can tip the edge case over; step back if so.
        while batch > 0 and self.for_batch(batch).total_bytes > budget_bytes:
            batch -= 1
        return batch

    def as_dict(self) -> dict:
        """Plain data for an event, with the totals."""
        return {
            **asdict(self),
            "fixed_bytes": self.fixed_bytes,
            "total_bytes": self.total_bytes,
        }


def estimate_memory(
    model: Any,
    batch_size: int,
    precision_policy: str = "float32",
    optimizer_name: str = "adam",
    *,
    momentum: float = 0.9,
    accumulation_steps: int = 1,
) -> MemoryEstimate:
    """Estimate the device memory one train step of ``model`` needs (see the module docstring).

    Args:
        model: a built Keras model (functional or sequential; nested models
            are walked into).
        batch_size: the per-replica batch.
        precision_policy: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
        optimizer_name: ``adam``, ``adamw`` or ``sgd``.
        momentum: SGD's momentum; 0 means no slot.
        accumulation_steps: more than 1 keeps a second set of gradients.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    trainable = sum(_size(w) for w in model.trainable_weights)
    weights_bytes = sum(_size(w) * _dtype_bytes(w.dtype) for w in model.weights)
    parameters = sum(_size(w) for w in model.weights)
    slots = OPTIMIZER_SLOTS.get(optimizer_name, 2)
    if optimizer_name == "sgd" and not momentum:
        slots = 0
    gradient_sets = 2 if accumulation_steps > 1 else 1
    mixed = precision_policy.startswith("mixed")
    outputs = layer_output_sizes(model)
    # A model built under the policy asked about has the right dtypes already
    # (its float32 logits included); otherwise predict them from the policy.
    built_mixed = any(dtype in ("float16", "bfloat16") for _, dtype in outputs)
    per_example = [
        elements * (_dtype_bytes(dtype) if built_mixed == mixed else _predicted_bytes(dtype, mixed))
        for elements, dtype in outputs
    ]
    input_bytes = sum(_elements(shape) * 4 for shape in _input_shapes(model))
    return MemoryEstimate(
        batch_size=batch_size,
        precision=precision_policy,
        optimizer=optimizer_name,
        parameters=parameters,
        trainable_parameters=trainable,
        weights_bytes=weights_bytes,
        optimizer_bytes=trainable * 4 * slots,
        gradient_bytes=trainable * 4 * gradient_sets,
        activation_bytes=(sum(per_example) + input_bytes) * batch_size,
        workspace_bytes=2 * max(per_example, default=0) * batch_size,
        layers=len(outputs),
    )


def layer_output_sizes(model: Any) -> list[tuple[int, str]]:
    """``(elements per example, dtype)`` of every layer output the estimate counts.

    Walks nested models; each layer counts every node it was called on (a
    shared layer keeps one output per call). View layers are skipped.
    """
    found: list[tuple[int, str]] = []
    for layer in _leaf_layers(model):
        if type(layer).__name__ in VIEW_LAYERS:
            continue
        for tensor in _outputs_of(layer):
            shape = tuple(tensor.shape)[1:]  # drop the batch dimension
            found.append((_elements(shape), _dtype_name(tensor.dtype)))
    return found


def _leaf_layers(model: Any) -> list[Any]:
    leaves = []
    for layer in getattr(model, "layers", []):
        if getattr(layer, "layers", None) and hasattr(layer, "inputs"):
            leaves.extend(_leaf_layers(layer))  # a nested functional model
        else:
            leaves.append(layer)
    return leaves


def _outputs_of(layer: Any) -> list[Any]:
    tensors = []
    for node in getattr(layer, "_inbound_nodes", []):
        outputs = getattr(node, "output_tensors", None) or getattr(node, "outputs", None) or []
        tensors.extend(outputs if isinstance(outputs, (list, tuple)) else [outputs])
    if not tensors:
        try:
            output = layer.output
        except (AttributeError, ValueError):
            return []
        tensors = list(output) if isinstance(output, (list, tuple)) else [output]
    return [t for t in tensors if hasattr(t, "shape") and hasattr(t, "dtype")]


def _input_shapes(model: Any) -> list[tuple]:
    inputs = getattr(model, "inputs", None) or []
    return [tuple(t.shape)[1:] for t in inputs]


def _elements(shape: Sequence[Any]) -> int:
    return math.prod(int(d) for d in shape if d is not None)


def _size(variable: Any) -> int:
    return _elements(tuple(variable.shape))


def _dtype_name(dtype: Any) -> str:
    return getattr(dtype, "name", None) or str(dtype)


def _dtype_bytes(dtype: Any) -> int:
    return _DTYPE_BYTES.get(_dtype_name(dtype), 4)


def _predicted_bytes(dtype: Any, mixed: bool) -> int:
    """Bytes of one element of a model built under the other policy than the one asked about."""
    name = _dtype_name(dtype)
    if mixed and name == "float32":
        # Built under float32, asked about mixed precision: its float activations
        # would be 16-bit (the float32 logits are too small to matter).
        return 2
    if not mixed and name in ("float16", "bfloat16"):
        return 4
    return _dtype_bytes(name)


# ----- against the GPU ---------------------------------------------------------------


def free_gpu_bytes(source: Any = None) -> int | None:
    """Free memory of the GPU this process will train on, from NVML; None without one.

    Call it before TensorFlow touches the GPU: TensorFlow claims most of a
    device's memory when it starts on it. The device is the first of
    ``CUDA_VISIBLE_DEVICES`` (an index), else device 0.

    Args:
        source: a :class:`engine.gpu.GpuSource` (NVML by default; tests pass recordings).
    """
    if source is None:
        from engine.gpu import NvmlSource

        source = NvmlSource()
    try:
        sample = source.sample()
    except Exception:  # noqa: BLE001 - prevention is advisory; never fail a run over it
        return None
    if sample.unavailable or sample.error or not sample.devices:
        return None
    device = _visible_device(sample.devices)
    return max(0, device.memory_total - device.memory_used)


def _visible_device(devices: Sequence[Any]) -> Any:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.isdigit():
        for device in devices:
            if device.index == int(visible):
                return device
    return devices[0]


def memory_budget(free_bytes: int) -> int:
    """Of ``free_bytes``, what a run can plan to use (reserve and headroom taken off)."""
    return max(0, int((free_bytes - RUNTIME_RESERVE_BYTES) * HEADROOM))


def nice_batch(batch: int) -> int:
    """A batch to suggest: from 64 up, rounded down to a multiple of 8 (GPU-friendly)."""
    return batch - batch % 8 if batch >= 64 else batch


def memory_check(estimate: MemoryEstimate, free_bytes: int | None) -> dict | None:
    """The ``memory_warning`` event's fields when the estimate will likely not fit, else None.

    Args:
        estimate: the run's estimate at its batch size.
        free_bytes: the GPU's free memory before the run (None: no GPU, no check).
    """
    if free_bytes is None:
        return None
    budget = memory_budget(free_bytes)
    if estimate.total_bytes <= budget:
        return None
    largest = estimate.largest_batch(budget)
    suggested = nice_batch(largest)
    if suggested >= 1:
        advice = f"try train.batch_size = {suggested} (the largest predicted to fit)"
    else:
        advice = (
            "even batch 1 is predicted not to fit: the weights and optimizer alone need "
            f"{_gib(estimate.fixed_bytes)}; try mixed precision or a smaller model"
        )
    message = (
        f"this run will likely not fit in GPU memory: batch {estimate.batch_size} needs about "
        f"{_gib(estimate.total_bytes)} and {_gib(free_bytes)} is free; {advice}"
    )
    return {
        "estimate_bytes": estimate.total_bytes,
        "free_bytes": free_bytes,
        "budget_bytes": budget,
        "batch_size": estimate.batch_size,
        "suggested_batch_size": suggested,
        "largest_batch_size": largest,
        "estimate": estimate.as_dict(),
        "message": message,
    }


def warn_if_memory_short(trainer: Any, free_bytes: int | None, events: Any) -> dict | None:
    """Estimate a set-up trainer's step and emit ``memory_warning`` when it will likely not fit.

    Never raises: a failed estimate becomes a ``log`` line and training goes on.

    Args:
        trainer: an :class:`engine.train.trainer.Trainer` after ``setup`` (model, config, policy).
        free_bytes: :func:`free_gpu_bytes` read before the trainer touched the GPU.
        events: the run's event writer.

    Returns:
        The warning's fields, or None when it fits or there is no GPU.
    """
    if free_bytes is None:
        return None
    train = trainer.config.train
    try:
        estimate = estimate_memory(
            trainer.model,
            getattr(trainer, "per_replica_batch", train.batch_size),
            getattr(trainer, "policy", "float32") or "float32",
            train.optimizer,
            momentum=train.momentum,
            accumulation_steps=train.accumulation_steps,
        )
    except Exception as error:  # noqa: BLE001 - advisory only
        events.emit("log", level="warning", message=f"memory estimate failed: {error}")
        return None
    warning = memory_check(estimate, free_bytes)
    if warning is not None:
        # One event; front ends print its ``message`` (the TUI's log pane does).
        events.emit("memory_warning", **warning)
    return warning


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 10 else f"{value / MIB:.0f} MiB"
