"""fit-batch trials, in a process of their own: ``python -m engine.train.fitbatch_trial``.

The search (:mod:`engine.fitbatch`) is TF-free; this is the half that
imports TensorFlow. Each ``--batch`` is one trial, run in order in this
process: the run's config at that batch, through the Trainer's own setup
and run, for one warm-up step (it traces the step function, and it is the
step that runs out of memory if any), one validation batch, and
``--steps`` timed steps. Each trial prints one ``FITBATCH {json}`` line
(:class:`engine.fitbatch.Trial`'s fields); a ``{"ready": true}`` line says
TensorFlow is imported, so the driver can tell start-up from trials.

The driver gives a GPU search one batch per process (TensorFlow keeps GPU
memory it has allocated); throughput on a CPU, where there is no memory to
poison, gets all its sizes in one process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from engine.config import ConfigError, RunConfig
from engine.fitbatch import (
    DEFAULT_TIMED_STEPS,
    ERROR,
    FITS,
    OUT_OF_MEMORY,
    RESULT_PREFIX,
    USER_ERROR,
    batch_limit,
    looks_like_oom,
    median_images_per_sec,
    sizes_within,
    trial_config,
)


def run_trials(config_path: Path, sizes: list[int], timed_steps: int) -> int:
    """Run a trial at each of ``sizes``, in order; print each outcome; the exit code.

    Sizes above the data's limit are replaced by the limit, once it is known.
    The trials stop at the first failure: a larger batch would fail too.
    """
    from engine.config import load_toml, validate_config

    try:
        data = load_toml(config_path)
        data.pop("revisions", None)
        config = validate_config(data, source=str(config_path))
    except ConfigError as error:
        return _say(USER_ERROR, batch_size=sizes[0], error=True, user_error=True, detail=str(error))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    _say(FITS, ready=True)
    queue, code = list(sizes), FITS
    while queue and code == FITS:
        batch = queue.pop(0)
        report = _one_trial(config, batch, timed_steps)
        code = report.pop("code")
        if report.get("batch_limit"):
            queue = sizes_within(queue, report["batch_limit"])
        _say(code, batch_size=batch, **report)
        tf.keras.backend.clear_session()  # the next trial builds its model afresh
    return code


def _one_trial(config: RunConfig, batch: int, timed_steps: int) -> dict:
    """One trial's report (its ``code`` too); never raises."""
    import tensorflow as tf

    from engine.train.trainer import OutOfMemory

    try:
        return {"code": FITS, "fits": True, **_train(config, batch, timed_steps)}
    except OutOfMemory as oom:
        return {"code": OUT_OF_MEMORY, "fits": False, "detail": oom.message}
    except tf.errors.ResourceExhaustedError as error:
        return {"code": OUT_OF_MEMORY, "fits": False, "detail": _first_line(error)}
    except ConfigError as error:
        return {"code": USER_ERROR, "fits": False, "error": True, "user_error": True, "detail": str(error)}
    except _BeyondData as beyond:
        return {"code": FITS, "fits": False, **beyond.report}
    except Exception as error:  # noqa: BLE001 - a CUDA OOM in another costume, or a bug
        line = f"{type(error).__name__}: {_first_line(error)}"
        if looks_like_oom(str(error)):
            return {"code": OUT_OF_MEMORY, "fits": False, "detail": line}
        print(line, file=sys.stderr)
        return {"code": ERROR, "fits": False, "error": True, "detail": line}


class _BeyondData(Exception):
    def __init__(self, report: dict) -> None:
        self.report = report


def _train(config: RunConfig, batch: int, timed_steps: int) -> dict:
    """Set up and run a throwaway trainer; its images/s and what it learnt of the data.

    The warm-up and timed steps run as one epoch when the data has enough
    batches; else as several short epochs (a second setup, once the trainer
    has said how many steps an epoch holds).
    """
    import tensorflow as tf

    steps = 1 + timed_steps
    trainer, step_events = _run(trial_config(config, batch, steps), data_check=True)
    if trainer.steps_per_epoch < steps:
        per_epoch = trainer.steps_per_epoch
        epochs = math.ceil(steps / per_epoch)
        trainer, step_events = _run(trial_config(config, batch, per_epoch, epochs))
    images_per_sec, timed = median_images_per_sec(step_events)
    report = {
        "detail": f"{len(step_events)} steps",
        "images_per_sec": images_per_sec,
        "timed_steps": timed,
        **_data_report(trainer),
    }
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        try:
            report["peak_bytes"] = int(tf.config.experimental.get_memory_info(gpus[0].name)["peak"])
        except (ValueError, tf.errors.OpError):
            pass
    return report


def _run(config: RunConfig, data_check: bool = False):
    """Set up a trainer in a temporary run directory and run it; it and its step events.

    With ``data_check``, a batch beyond the data's limit raises :class:`_BeyondData`
    before any step, and an epoch too short for the steps asked returns the
    trainer untrained, with no step (the caller sets up again in short epochs).
    """
    from engine.run.control import ControlState
    from engine.run.events import EventWriter, read_events
    from engine.run.protocol import to_dict
    from engine.train.faults import parse_faults
    from engine.train.trainer import Trainer

    class TrialTrainer(Trainer):
        """Saves nothing: no checkpoint, no model.keras, no final event."""

        def save_checkpoint(self) -> None:
            return None

        def finish(self, reason: str) -> str:
            return reason

    with tempfile.TemporaryDirectory(prefix="convdeck-trial-") as tmp:
        run_dir = Path(tmp)
        with EventWriter(run_dir / "events.jsonl", flush_interval=0.0) as events:
            trainer = TrialTrainer(config, run_dir, events, ControlState(), parse_faults())
            trainer.setup()
            try:
                if data_check:
                    report = _data_report(trainer)
                    if config.train.batch_size > report["batch_limit"]:
                        raise _BeyondData({**report, "beyond_data": True, "detail": _beyond(report)})
                    if trainer.steps_per_epoch < config.train.steps_per_epoch:
                        return trainer, []
                if trainer.data.val is not None:
                    # One validation batch an epoch tries the evaluation step's memory.
                    trainer.data.val = trainer.data.val.take(1)
                trainer.run()
            finally:
                trainer.tensorboard.close()
        events = read_events(run_dir / "events.jsonl")
        step_events = [to_dict(single) for e in events if e.type == "step" for single in e.unbatched()]
    return trainer, step_events


def _data_report(trainer) -> dict:
    import tensorflow as tf

    examples = int(trainer.data.train_examples)
    replicas = int(trainer.dist.replicas)
    return {
        "train_examples": examples,
        "batch_limit": batch_limit(examples, trainer.config.train.accumulation_steps, replicas),
        "replicas": replicas,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def _beyond(report: dict) -> str:
    return (
        f"beyond the training set ({report['train_examples']} examples): "
        f"batch {report['batch_limit']} is the largest it allows"
    )


def _say(code: int, **fields) -> int:
    print(RESULT_PREFIX + json.dumps(fields, default=str), flush=True)
    return code


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.fitbatch_trial")
    parser.add_argument("--trial", type=Path, required=True, help="a config.toml to try")
    parser.add_argument("--batch", type=int, action="append", required=True, help="a batch to try (repeatable)")
    parser.add_argument("--steps", type=int, default=DEFAULT_TIMED_STEPS, help="timed steps")
    args = parser.parse_args(argv)
    return run_trials(args.trial, args.batch, args.steps)


if __name__ == "__main__":
    sys.exit(main())
