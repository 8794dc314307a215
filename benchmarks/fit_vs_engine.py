"""The engine's training speed against plain Keras ``model.fit``, side by side.

For each workload it trains the same model (``engine.models.build_model``,
same seed) on the same data (the run's ``DataBundle``; fit gets its
``train`` dataset with ``.repeat()``) with the same batch, optimizer
(``engine.train.optimizers.make_optimizer`` on the preset's train section, so
Adam 2e-3 for LeNet-5 and the preset's SGD for ResNet) and loss (sparse
categorical crossentropy from logits, plus accuracy, as the engine
computes) through:

  fit spe=1    ``model.fit`` with ``steps_per_execution=1``
  fit spe=K    ``model.fit`` with ``steps_per_execution`` K, for each K of
               ``--spe`` clipped to the steps in an epoch (a longer
               execution would only run extra steps an epoch); the best fit
               is marked ``*``
  engine       ``engine.train.trainer.Trainer`` in process, exactly as the worker
               drives it: ``setup()``, ``run()``, with a run directory, an
               events file, checkpoints and TensorBoard summaries
  engine FILE  with ``--trainer FILE``: the Trainer of a copy of
               engine/train/trainer.py, to measure a proposed change beside it

How speed is measured, the same way for all of them: a run trains
``1 + --epochs`` epochs. The first is warm-up (tracing, graph optimisation,
the engine's first short call) and is not counted. Each later epoch is timed
from its start to its end, where its end waits for the device (fit: its
logs are read as Python floats; engine: its calls hand back numpy arrays),
and the steps it ran are counted (fit: the optimizer's update counter).

  images/s      batch x steps / wall-clock seconds of the timed epochs
  images/CPU-s  the same over the process's CPU seconds (all its threads):
                steadier than wall-clock on a machine shared with other work
                (it cannot see time spent waiting, though)

Inside the engine's epochs is everything it does between steps: per-step
events, mid-epoch checkpoints (``checkpoint_every``; their share is printed),
TensorBoard scalars, making the epoch's data iterator. Its end-of-epoch
validation and checkpoint are not (fit gets no validation data); their
seconds are printed apart. Its own view, the median ``images_per_sec`` of its
step events (call time only), is printed too.

Every measurement is repeated ``--repeats`` times and the median printed.
The variants of a workload run in one process, interleaved, in alternating
order from repeat to repeat, so drift of the machine and whatever running
first or last costs fall on all of them alike.

Workloads:
  lenet5    preset lenet5-digits as it ships (batch 32, Adam 2e-3, 44 steps
            an epoch): bound by per-step overhead, not arithmetic.
  resnet18  preset resnet18-cifar10 on synthetic 32x32 images (ResNet
            [2,2,2,2], the preset's SGD/momentum/cosine and flip/crop
            augmentation) with batch 16 and 4 steps an epoch, so that it fits
            a couple of minutes on two CPU cores: bound by arithmetic. On a
            GPU: --workload resnet18 --set train.batch_size=128
            --set train.steps_per_epoch=50.

Usage:
  python benchmarks/fit_vs_engine.py [--workload lenet5|resnet18|all]
      [--epochs N] [--repeats R] [--spe 8,32,64] [--set KEY=VALUE]...
      [--trainer COPY_OF_TRAINER.py]...
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
    "lenet5": ("lenet5-digits", [], 8, 3),
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
    workload: str,
    epochs: int,
    repeats: int,
    spe_list: list[int],
    extra: list[str],
    other_trainers: list[str],
) -> dict:
    import keras
    import tensorflow as tf

    from engine.models import build_model
    from engine.presets import load_preset
    from engine.run.control import ControlState
    from engine.run.events import EventWriter, read_events
    from engine.train import precision
    from engine.train.data import load_data
    from engine.train.faults import Faults
    from engine.train.optimizers import make_optimizer
    from engine.train.trainer import Trainer
    from engine.train.xla import use_xla

    preset, overrides, _, _ = WORKLOADS[workload]
    config = load_preset(preset, [*overrides, *extra, f"train.epochs={1 + epochs}"])
    train = config.train
    # fit gets XLA exactly where the engine's "auto" takes it (on a GPU).
    jit_compile = use_xla(train.jit_compile, on_gpu=bool(tf.config.list_logical_devices("GPU")))
    precision.apply_policy(train.mixed_precision)
    bundle = load_data(config.data, train.batch_size, seed=train.seed)
    steps_per_epoch = max(1, bundle.steps_per_epoch // train.accumulation_steps)
    if train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.steps_per_epoch)
    total_epochs = 1 + epochs
    batch = train.batch_size * train.accumulation_steps

    def rates(epochs: list[tuple[int, float, float]]) -> dict:
        """images/s of wall-clock and of process CPU time, over the epochs after the first."""
        timed = epochs[1:]  # the first epoch is warm-up
        images = batch * sum(steps for steps, _, _ in timed)
        return {
            "images_per_sec": images / sum(wall for _, wall, _ in timed),
            "images_per_cpu_sec": images / sum(cpu for _, _, cpu in timed),
            "epochs": epochs,
        }

    def measure_fit(spe: int) -> dict:
        keras.utils.set_random_seed(train.seed)
        model = build_model(config.model, bundle.input_shape, bundle.num_classes)
        optimizer = make_optimizer(train, steps_per_epoch, steps_per_epoch * total_epochs)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["sparse_categorical_accuracy"],
            steps_per_execution=spe,
            jit_compile=jit_compile,
        )
        timer = EpochTimer(optimizer)
        model.fit(
            bundle.train.repeat(),
            epochs=total_epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[timer],
            verbose=0,
        )
        return rates(timer.records)

    def measure_engine(trainer_class) -> dict:
        class TimedTrainer(trainer_class):
            """The trainer as it is, with clocks around its epochs and checkpoints."""

            def _train_epoch(self, epoch: int) -> None:
                first, started, cpu = self.step, time.perf_counter(), time.process_time()
                self.bench_saving = 0.0
                super()._train_epoch(epoch)
                elapsed = time.perf_counter() - started
                self.bench_records.append((self.step - first, elapsed, time.process_time() - cpu))
                self.bench_checkpointing.append(self.bench_saving)
                self.bench_saving = None

            def _end_epoch(self, epoch: int) -> None:
                started = time.perf_counter()
                super()._end_epoch(epoch)
                self.bench_end_epoch.append(time.perf_counter() - started)

            def save_checkpoint(self):
                started = time.perf_counter()
                try:
                    return super().save_checkpoint()
                finally:
                    if getattr(self, "bench_saving", None) is not None:
                        self.bench_saving += time.perf_counter() - started

        with tempfile.TemporaryDirectory(prefix="convdeck-bench-") as tmp:
            run_dir = Path(tmp) / "bench-run"
            run_dir.mkdir()
            events = EventWriter(run_dir / "events.jsonl")
            trainer = TimedTrainer(config, run_dir, events, ControlState(), Faults())
            trainer.bench_records, trainer.bench_end_epoch, trainer.bench_checkpointing = [], [], []
            trainer.setup()
            assert trainer.steps_per_epoch == steps_per_epoch, (
                trainer.steps_per_epoch,
                steps_per_epoch,
            )
            trainer.run()
            events.close()
            own = [
                e.images_per_sec
                for e in read_events(run_dir / "events.jsonl")
                if e.type == "step" and e.epoch > 1
            ]
        timed_wall = sum(wall for _, wall, _ in trainer.bench_records[1:])
        return {
            **rates(trainer.bench_records),
            # Share of the timed epochs spent saving checkpoints mid-epoch (checkpoint_every).
            "checkpoint_share": sum(trainer.bench_checkpointing[1:]) / timed_wall,
            "own_images_per_sec": statistics.median(own) if own else None,
            "end_epoch_seconds": statistics.median(trainer.bench_end_epoch[1:] or [0.0]),
            "steps_per_call": trainer.steps_per_call,
        }

    # An execution longer than the epoch would only run extra steps each epoch
    # (the data repeats), so K is clipped to the steps per epoch.
    spes = sorted({1, *(min(k, steps_per_epoch) for k in spe_list)})
    engines = {"engine": Trainer}
    for path in other_trainers:
        engines[f"engine {Path(path).name}"] = load_trainer_class(path)
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
    """``Trainer`` of a copy of engine/train/trainer.py: a proposed change, measured beside it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("proposed_trainer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.Trainer


def EpochTimer(optimizer):  # noqa: N802 - a callback class made once keras is imported
    import keras

    class _EpochTimer(keras.callbacks.Callback):
        """Epoch wall times that end on a device sync, with the updates each ran."""

        def __init__(self) -> None:
            super().__init__()
            self.records: list[tuple[int, float, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._steps = int(optimizer.iterations.numpy())
            self._started, self._cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            for value in (logs or {}).values():
                float(value)  # waits for the epoch's last step
            steps = int(optimizer.iterations.numpy()) - self._steps
            self.records.append(
                (steps, time.perf_counter() - self._started, time.process_time() - self._cpu)
            )

    return _EpochTimer()


def log(workload: str, variant: str, result: dict) -> None:
    per_epoch = " ".join(f"{s}:{t:.3f}s" for s, t, _ in result["epochs"])
    print(
        f"  [{workload}] {variant:<11} {result['images_per_sec']:9.1f} img/s  "
        f"epochs(steps:s) {per_epoch}",
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
        f"{report['steps_per_epoch']} steps/epoch; "
        f"1 warm-up + {report['epochs_timed']} timed epochs; "
        f"median of {report['repeats']}"
    )
    cpu = {v: statistics.median(r["images_per_cpu_sec"] for r in rs) for v, rs in results.items()}
    best_cpu = max((v for v in cpu if v.startswith("fit")), key=cpu.get)
    width = max(16, *(len(v) + 3 for v in results))
    print(
        f"  {'variant':<{width}}{'images/s':>10}{'vs best fit':>13}"
        f"{'images/CPU-s':>14}{'vs best fit':>13}   each repeat (images/s)"
    )
    for variant, rs in results.items():
        mark = " *" if variant == best else ""
        runs = ", ".join(f"{r['images_per_sec']:.0f}" for r in rs)
        print(
            f"  {variant + mark:<{width}}{medians[variant]:>10.1f}"
            f"{medians[variant] / fits[best]:>12.2f}x"
            f"{cpu[variant]:>14.1f}{cpu[variant] / cpu[best_cpu]:>12.2f}x   {runs}"
        )
    for name in engines:
        rs = results[name]
        own = [r["own_images_per_sec"] for r in rs if r["own_images_per_sec"]]
        end = statistics.median(r["end_epoch_seconds"] for r in rs)
        saving = statistics.median(r["checkpoint_share"] for r in rs)
        print(
            f"  {name}: / best fit ({best.removeprefix('fit ')}) = "
            f"{medians[name] / fits[best]:.2f}, "
            f"/ fit spe=1 = {medians[name] / medians['fit spe=1']:.2f}\n"
            f"    its step events say {statistics.median(own) if own else float('nan'):.0f} "
            f"images/s (call time only); {100 * saving:.0f}% of its timed epochs went to "
            f"mid-epoch checkpoints; "
            f"steps_per_call {rs[-1]['steps_per_call']}; validation+checkpoint after each epoch "
            f"(not timed) {end:.2f} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument(
        "--epochs", type=int, help="timed epochs after the warm-up one (default: per workload)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="repeat each measurement, report the median (default: per workload)",
    )
    parser.add_argument(
        "--spe",
        default=DEFAULT_SPE,
        help=f"steps_per_execution values for fit besides 1 (default {DEFAULT_SPE})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every workload (e.g. train.batch_size=128)",
    )
    parser.add_argument(
        "--trainer",
        metavar="FILE",
        action="append",
        default=[],
        help="also measure the Trainer of this copy of engine/train/trainer.py (a change); repeatable",
    )
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
            args.child,
            args.epochs or epochs,
            args.repeats or repeats,
            spe_list,
            args.overrides,
            args.trainer,
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
            command = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--spe",
                args.spe,
                "--out",
                out.name,
            ]
            for flag, value in (("--epochs", args.epochs), ("--repeats", args.repeats)):
                if value:
                    command += [flag, str(value)]
            for path in args.trainer:
                command += ["--trainer", str(Path(path).resolve())]
            for assignment in args.overrides:
                command += ["--set", assignment]
            t0 = time.monotonic()
            # TensorFlow's start-up chatter goes to a file, shown only on failure.
            with tempfile.TemporaryFile("w+") as chatter:
                done = subprocess.run(command, stderr=chatter)
                if done.returncode:
                    chatter.seek(0)
                    sys.stderr.write(chatter.read())
                    print(
                        f"{name}: the measuring process failed (exit {done.returncode})",
                        file=sys.stderr,
                    )
                    return 1
            report = json.loads(Path(out.name).read_text())
        print_table(report)
        print(f"  ({time.monotonic() - t0:.0f} s for this workload; {load_line()})", flush=True)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
