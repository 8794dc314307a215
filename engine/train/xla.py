"""Whether the train step is compiled with XLA: ``train.jit_compile`` of true, false or "auto".

XLA fuses a step's many small kernels into a few, which pays where
launching kernels costs most: on a GPU, where it is worth its compile time
for any run. "auto" takes it there, and not on a CPU, where it loses on
both counts. ``python benchmarks/xla_cost.py`` on the 2-core development
CPU (TensorFlow 2.21, whose own CPU convolutions are oneDNN's):

- lenet5-digits: XLA steps 0.60-0.66x as fast (7.1 vs 4.3 ms), its first
  call 0.8-3.6 s longer (two rounds of 3 repeats); the whole run (11
  epochs) 13.9 s against 9.3 s.
- ResNet [2,2,2,2], synthetic 32x32, batch 16: XLA steps 0.35x as fast
  (1.18 vs 0.41 s), its first call 18 s longer.

A slower step never earns its compile time back, however long the run, so
no run length turns XLA on on a CPU; ``true`` still forces it.
"""

from __future__ import annotations

from typing import Literal


def use_xla(setting: Literal["auto"] | bool, on_gpu: bool) -> bool:
    """XLA for this run's train step?

    Args:
        setting: ``train.jit_compile``; true or false force it.
        on_gpu: every replica of the run is a GPU.
    """
    if setting == "auto":
        return on_gpu
    return bool(setting)
