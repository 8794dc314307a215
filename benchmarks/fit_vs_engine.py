"""The engine's training speed against plain Keras ``model.fit``, side by side.

For each workload it trains the same model (``engine.models.build_model``,
same seed, same initial weights) on the same data (the run's ``DataBundle``)
with the same batch, optimizer (``engine.optimizers.make_optimizer`` on the
preset's train section) and loss (sparse categorical crossentropy from
logits, plus an accuracy metric, as the engine computes) through:

  fit spe=1    ``model.fit`` with ``steps_per_execution=1``
  fit spe=K    ``model.fit`` with ``steps_per_execution`` K for each K tried;
               the table shows every K and marks the best
  engine       ``engine.trainer.Trainer`` in process: ``setup()``, ``run()``,
               with a real run directory, events file, checkpoints and
               TensorBoard summaries, exactly as the worker drives it

How speed is measured (the same for all three): each run trains
``1 + --epochs`` epochs. The first is warm-up (tracing, graph optimisation,
the engine's first short call) and is not counted. Every later epoch is
timed from its start to its end on a monotonic clock, where its end waits
for the device (fit: the epoch's logs are read as Python floats; engine: its
calls hand back numpy arrays), and the steps it ran are counted from the
optimizer's update counter. images/s = batch x steps / seconds over the
timed epochs. What an epoch costs the engine between its steps - per-step
events, mid-epoch checkpoints, TensorBoard scalars, making the epoch's
iterator - is inside the timing; its end-of-epoch validation and checkpoint
are not (fit gets no validation data), and are reported separately.
Each measurement is repeated ``--repeats`` times, the variants interleaved
within each repeat so drift of the machine hits them alike; the median is
printed. ``engine (own)`` is the median ``images_per_sec`` the engine wrote
in its step events for the timed epochs (device time of its calls only), as
a cross-check of what a user sees in the UI.

Workloads:
  lenet5    preset lenet5-digits as it ships (batch 32, Adam 2e-3, 44 steps
            an epoch): bound by per-step overhead, not arithmetic.
  resnet18  preset resnet18-cifar10 on synthetic 32x32 images (ResNet
            [2,2,2,2], its SGD/momentum/cosine optimizer and flip/crop
            augmentation), with a smaller batch and a capped epoch so it fits
            a few minutes on a laptop CPU (see WORKLOADS): bound by arithmetic.

Usage:
  python benchmarks/fit_vs_engine.py [--workload lenet5|resnet18|all]
      [--epochs N] [--repeats R] [--spe 8,32,64] [--set KEY=VALUE]...
(``--child`` is the per-workload process it launches.)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name -> (preset, overrides, default timed epochs, default repeats)
WORKLOADS: dict[str, tuple[str, list[str], int, int]] = {
    "lenet5": ("lenet5-digits", [], 10, 3),
    "resnet18": (
        "resnet18-cifar10",
        [
            "data.dataset=synthetic",
            "data.image_size=[32, 32]",
            "data.synthetic_examples=1024",
            # No validation split: the engine's end-of-epoch validation is
            # outside the timing anyway, and would only lengthen the run.
            "data.validation_split=0.0",
            # The preset's batch 128 takes several seconds a step on 2 CPU
            # cores; 16 keeps the workload near two minutes there. It is
            # bound by arithmetic either way. On a GPU pass
            # --set train.batch_size=128 --set train.steps_per_epoch=50.
            "train.batch_size=16",
            "train.steps_per_epoch=4",
        ],
        2,
        2,
    ),
}
DEFAULT_SPE = "8,32,64"


# ----- the measurements (child process) ------------------------------------


def child(
    workload: str, epochs: int, repeats: int, spe_list: list[int], extra: list[str], other_trainer: str | None
) -> dict:
    import keras
    import tensorflow as tf

    from engine import precision
    from engine.control import ControlState
    from engine.data import load_data
    from engine.events import EventWriter, read_events
    from engine.faults import Faults
    from engine.models import build_model
    from engine.optimizers import make_optimizer
    from engine.presets import load_preset
    from engine.trainer import Trainer

    preset, overrides, _, _ = WORKLOADS[workload]
    config = load_preset(preset, [*overrides, *extra, f"train.epochs={1 + epochs}"])
    train = config.train
    precision.apply_policy(train.mixed_precision)
    bundle = load_data(config.data, train.batch_size, seed=train.seed)
    steps_per_epoch = max(1, bundle.steps_per_epoch // train.accumulation_steps)
    if train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.steps_per_epoch)
    total_epochs = 1 + epochs
    batch = train.batch_size * train.accumulation_steps

    def rate(epoch_records: list[tuple[int, float]]) -> float:
        timed = epoch_records[1:]  # the first epoch is warm-up
        return batch * sum(s for s, _ in timed) / sum(t for _, t in timed)

    def measure_fit(spe: int) -> dict:
        keras.utils.set_random_seed(train.seed)
        model = build_model(config.model, bundle.input_shape, bundle.num_classes)
        optimizer = make_optimizer(train, steps_per_epoch, steps_per_epoch * total_epochs)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["sparse_categorical_accuracy"],
            steps_per_execution=spe,
            jit_compile=train.jit_compile,
        )
        timer = EpochTimer(optimizer)
        model.fit(
            bundle.train.repeat(),
            epochs=total_epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[timer],
            verbose=0,
        )
        return {"images_per_sec": rate(timer.records), "epochs": timer.records}

    def measure_engine(trainer_class) -> dict:
        class TimedTrainer(trainer_class):
            records: list[tuple[int, float]] = []
            end_epoch_seconds: list[float] = []

            def _train_epoch(self, epoch: int) -> None:
                first, started = self.step, time.perf_counter()
                super()._train_epoch(epoch)
                self.records.append((self.step - first, time.perf_counter() - started))

            def _end_epoch(self, epoch: int) -> None:
                started = time.perf_counter()
                super()._end_epoch(epoch)
                self.end_epoch_seconds.append(time.perf_counter() - started)

        with tempfile.TemporaryDirectory(prefix="convdeck-bench-") as tmp:
            run_dir = Path(tmp) / "bench-run"
            run_dir.mkdir()
            events = EventWriter(run_dir / "events.jsonl")
            trainer = TimedTrainer(config, run_dir, events, ControlState(), Faults())
            trainer.records, trainer.end_epoch_seconds = [], []
            trainer.setup()
            assert trainer.steps_per_epoch == steps_per_epoch, (trainer.steps_per_epoch, steps_per_epoch)
            trainer.run()
            events.close()
            own = [
                e["images_per_sec"]
                for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "step" and e["epoch"] > 1
            ]
        return {
            "images_per_sec": rate(trainer.records),
            "epochs": trainer.records,
            "own_images_per_sec": statistics.median(own) if own else None,
            "end_epoch_seconds": statistics.median(trainer.end_epoch_seconds[1:] or [0.0]),
            "steps_per_call": trainer.steps_per_call,
        }

    # An execution longer than the epoch would only run extra steps each epoch
    # (the data repeats), so K is clipped to the steps per epoch.
    spes = sorted({1, *(min(k, steps_per_epoch) for k in spe_list)})
    engines = {"engine": Trainer}
    if other_trainer:
        engines[f"engine {Path(other_trainer).name}"] = load_trainer_class(other_trainer)
    results: dict[str, list[dict]] = {f"fit spe={k}": [] for k in spes}
    results.update({name: [] for name in engines})
    runs = [(f"fit spe={spe}", lambda spe=spe: measure_fit(spe)) for spe in spes]
    runs += [(name, lambda cls=cls: measure_engine(cls)) for name, cls in engines.items()]
    for repeat in range(repeats):
        # Alternate the order, so whatever running first or last costs is shared.
        for name, measure in runs if repeat % 2 == 0 else runs[::-1]:
            results[name].append(measure())
            log(workload, name, results[name][-1])
            # Leave nothing of this run (models, iterators, graphs) to the next.
            keras.backend.clear_session()
            gc.collect()
    return {
        "workload": workload,
        "preset": preset,
        "overrides": [*overrides, *extra],
        "model": config.model.arch,
        "data": bundle.description,
        "batch": batch,
        "steps_per_epoch": steps_per_epoch,
        "epochs_timed": epochs,
        "repeats": repeats,
        "optimizer": f"{train.optimizer} lr={train.learning_rate} schedule={train.schedule}",
        "results": results,
    }


def load_trainer_class(path: str):
    """``Trainer`` from a copy of engine/trainer.py, to measure a proposed change beside the real one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("proposed_trainer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trainer


def EpochTimer(optimizer):  # noqa: N802 - a callback class made once keras is imported
    import keras

    class _EpochTimer(keras.callbacks.Callback):
        """Epoch wall times that end on a device sync, with the updates each ran."""

        def __init__(self) -> None:
            super().__init__()
            self.records: list[tuple[int, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._steps = int(optimizer.iterations.numpy())
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            for value in (logs or {}).values():
                float(value)  # waits for the epoch's last step
            steps = int(optimizer.iterations.numpy()) - self._steps
            self.records.append((steps, time.perf_counter() - self._started))

    return _EpochTimer()


def log(workload: str, variant: str, result: dict) -> None:
    per_epoch = " ".join(f"{s}:{t:.3f}s" for s, t in result["epochs"])
    print(
        f"  [{workload}] {variant:<11} {result['images_per_sec']:9.1f} img/s  epochs(steps:s) {per_epoch}",
        flush=True,
    )


# ----- the table (parent process) -------------------------------------------


def machine_line() -> str:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "?"

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}; {usable} CPUs usable ({os.cpu_count()} online); "
        f"python {platform.python_version()}; tensorflow {version('tensorflow')}; "
        f"keras {version('keras')}; {platform.system()} {platform.release()}"
    )


def load_line() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    except OSError:
        return "load average unknown"


def print_table(report: dict) -> None:
    results = report["results"]
    medians = {v: statistics.median(r["images_per_sec"] for r in rs) for v, rs in results.items()}
    fits = {v: m for v, m in medians.items() if v.startswith("fit")}
    engines = [v for v in results if v.startswith("engine")]
    best = max(fits, key=fits.get)
    print(
        f"\n{report['workload']}: preset {report['preset']}"
        + "".join(f" --set {shlex.quote(o)}" for o in report["overrides"])
    )
    print(
        f"  {report['model']} on {report['data']}; batch {report['batch']}; {report['optimizer']}; "
        f"{report['steps_per_epoch']} steps/epoch; 1 warm-up + {report['epochs_timed']} timed epochs; "
        f"median of {report['repeats']}"
    )
    width = max(16, *(len(v) + 3 for v in results))
    print(f"  {'variant':<{width}}{'images/s':>10}{'vs best fit':>13}   each repeat (images/s)")
    for variant, rs in results.items():
        mark = " *" if variant == best else ""
        runs = ", ".join(f"{r['images_per_sec']:.0f}" for r in rs)
        ratio = medians[variant] / fits[best]
        print(f"  {variant + mark:<{width}}{medians[variant]:>10.1f}{ratio:>12.2f}x   {runs}")
    for name in engines:
        rs = results[name]
        own = [r["own_images_per_sec"] for r in rs if r["own_images_per_sec"]]
        end = statistics.median(r["end_epoch_seconds"] for r in rs)
        print(
            f"  {name}: / best fit ({best.removeprefix('fit ')}) = {medians[name] / fits[best]:.2f}, "
            f"/ fit spe=1 = {medians[name] / medians['fit spe=1']:.2f}; "
            f"its step events say {statistics.median(own) if own else float('nan'):.0f} images/s; "
            f"steps_per_call {rs[-1]['steps_per_call']}; "
            f"end-of-epoch validation+checkpoint (not timed) {end:.2f} s an epoch"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--epochs", type=int, help="timed epochs after the warm-up one (default: per workload)")
    parser.add_argument("--repeats", type=int, help="repeat each measurement, report the median (default: per workload)")
    parser.add_argument("--spe", default=DEFAULT_SPE, help=f"steps_per_execution values for fit besides 1 (default {DEFAULT_SPE})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every workload (e.g. train.batch_size=128)")
    parser.add_argument("--trainer", metavar="FILE",
                        help="also measure the Trainer of this copy of engine/trainer.py (a proposed change)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spe_list = [int(s) for s in args.spe.split(",") if s.strip()]

    if args.child:
        import warnings

        # fit warns that it cannot shuffle a tf.data.Dataset: the bundle's is shuffled already.
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        _, _, epochs, repeats = WORKLOADS[args.child]
        report = child(
            args.child, args.epochs or epochs, args.repeats or repeats, spe_list, args.overrides, args.trainer
        )
        Path(args.out).write_text(json.dumps(report))
        return 0

    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print("machine: " + machine_line())
    print("before:  " + load_line())
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    started = time.monotonic()
    for name in names:
        # One process per workload: each gets a fresh TensorFlow runtime (thread
        # pools, the global Keras dtype policy and seed, allocator and oneDNN
        # primitive caches), so one workload's warm caches, memory or threads
        # never flatter or slow the next. Inside a workload the variants share
        # a process and are interleaved repeat by repeat, so drift of the
        # machine (other processes, thermal) meets them all alike.
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--child", name, "--spe", args.spe, "--out", out.name]
            for flag, value in (("--epochs", args.epochs), ("--repeats", args.repeats), ("--trainer", args.trainer)):
                if value:
                    command += [flag, str(value)]
            for assignment in args.overrides:
                command += ["--set", assignment]
            t0 = time.monotonic()
            # TensorFlow's start-up chatter goes to a file, shown only on failure.
            with tempfile.TemporaryFile("w+") as chatter:
                done = subprocess.run(command, stderr=chatter)
                if done.returncode:
                    chatter.seek(0)
                    sys.stderr.write(chatter.read())
                    print(f"{name}: the measuring process failed (exit {done.returncode})", file=sys.stderr)
                    return 1
            report = json.loads(Path(out.name).read_text())
        print_table(report)
        print(f"  ({time.monotonic() - t0:.0f} s for this workload; {load_line()})", flush=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
