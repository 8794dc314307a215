"""Whether the train step is compiled with XLA: ``train.jit_compile`` of true, false or "auto".

XLA fuses a step's many small kernels into few, which pays most where
launching kernels costs most: on a GPU, always worth its compile time. On a
CPU it makes a LeNet-5 step faster too, but its compile at the first call
costs more than a short run saves. So "auto" takes XLA on a GPU, and on a
CPU only for a run with at least ``XLA_CPU_MIN_STEPS`` steps still to train.

The threshold is a measurement, ``python benchmarks/xla_cost.py`` on
lenet5-digits (2-core CPU, TensorFlow 2.21): XLA steps 1.30x as fast
(3.46 -> 2.66 ms), its first call 1.9 s longer, so it breaks even after
about 2,400 steps; the threshold doubles that, as the first call's cost
varies from run to run more than the steps do.
"""

from __future__ import annotations

from typing import Literal

XLA_CPU_MIN_STEPS = 5000


def use_xla(setting: Literal["auto"] | bool, on_gpu: bool, steps_to_run: int) -> bool:
    """XLA for this run's train step?

    Args:
        setting: ``train.jit_compile``; true or false force it.
        on_gpu: every replica of the run is a GPU.
        steps_to_run: the steps this worker will train (a resumed run's remaining ones).
    """
    if setting != "auto":
        return bool(setting)
    return on_gpu or steps_to_run >= XLA_CPU_MIN_STEPS
