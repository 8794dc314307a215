"""One compiled call of the engine against Keras' own train function, step for step.

``fit_vs_engine.py`` times whole epochs, where the machine's drift can hide a
few percent. This times only the compiled work: the engine's ``_train_calls``
(one call an epoch, 44 steps, as its worker runs lenet5-digits) and Keras'
``train_function`` with ``steps_per_execution`` 44, interleaved in alternating
order, ``--rounds`` times; each call ends with its results read on the host.
The engine gets its epoch's iterator as ``_train_epoch`` does, outside the
clock. Prints the median and lower quartile per step and the ratio.

Usage: python benchmarks/step_call_vs_keras.py [--rounds 25] [TRAINER_COPY.py ...]
(a copy of engine/train/trainer.py given as an argument is measured beside it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_trainer(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("trainers", nargs="*", help="copies of engine/train/trainer.py to compare")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from engine.models import build_model
    from engine.presets import load_preset
    from engine.run.control import ControlState
    from engine.run.events import EventWriter
    from engine.train.data import load_data
    from engine.train.faults import Faults
    from engine.train.optimizers import make_optimizer

    steps = 44  # lenet5-digits' epoch: 1,437 training images in batches of 32
    epochs = args.rounds + 4  # one a call, warm-up included
    config = load_preset("lenet5-digits", [f"train.epochs={epochs}", "train.checkpoint_every=1000000"])
    train = config.train
    bundle = load_data(config.data, train.batch_size, seed=train.seed)

    keras.utils.set_random_seed(train.seed)
    model = build_model(config.model, bundle.input_shape, bundle.num_classes)
    model.compile(
        optimizer=make_optimizer(train, 44, 44 * epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
        steps_per_execution=steps,
    )
    model.make_train_function()
    keras_iterator = iter(bundle.train.repeat())

    def keras_call() -> float:
        started = time.perf_counter()
        float(model.train_function(keras_iterator)["loss"])
        return time.perf_counter() - started

    calls = {"keras train_function": keras_call}
    engine_trainer = str(ROOT / "engine" / "train" / "trainer.py")
    for name, path in [("engine", engine_trainer), *[(Path(p).name, p) for p in args.trainers]]:
        trainer_class = load_trainer(path)
        run_dir = Path(tempfile.mkdtemp(prefix="convdeck-step-call-"))
        trainer = trainer_class(config, run_dir, EventWriter(run_dir / "events.jsonl"), ControlState(), Faults())
        trainer.setup()
        assert trainer.steps_per_epoch == steps, trainer.steps_per_epoch

        def engine_call(trainer=trainer, epoch=[0]) -> float:  # noqa: B006 (a mutable default as a call counter)
            iterator = trainer._iterator_at(epoch[0], 0)
            started = time.perf_counter()
            results = trainer._train_calls(iterator, tf.constant(steps), tf.constant(-1, tf.int64))
            for tensor in results:
                tensor.numpy()
            elapsed = time.perf_counter() - started
            trainer._iterator_position = (epoch[0] + 1, 0)  # as _train_epoch leaves it
            epoch[0] += 1
            return elapsed

        calls[name] = engine_call

    for call in calls.values():
        for _ in range(3):  # tracing and warm-up
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_number in range(args.rounds):
        order = list(calls.items())
        for name, call in order if round_number % 2 == 0 else order[::-1]:
            times[name].append(call() / steps * 1000)
    keras_median = statistics.median(times["keras train_function"])
    print(f"lenet5-digits, batch {train.batch_size}, {steps} steps a call, {args.rounds} rounds")
    for name, values in times.items():
        median = statistics.median(values)
        quartile = sorted(values)[len(values) // 4]
        print(
            f"  {name:<22} median {median:.3f} ms/step  lower quartile {quartile:.3f}  "
            f"Keras / this {keras_median / median:.3f}"
        )


if __name__ == "__main__":
    main()
