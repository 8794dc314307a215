"""One fit-batch trial, in a process of its own: ``python -m engine.train.fitbatch_trial``.

The search (:mod:`engine.fitbatch`) is TF-free; this is the half that
imports TensorFlow, builds the model and data and trains a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from engine.config import RunConfig
from engine.fitbatch import (
    DEFAULT_STEPS,
    ERROR,
    FITS,
    OUT_OF_MEMORY,
    RESULT_PREFIX,
    USER_ERROR,
    _looks_like_oom,
    trial_config,
)


def run_trial(config_path: Path, batch: int, steps: int) -> int:
    """Train ``steps`` steps at ``batch`` in this process; print the outcome; its exit code."""
    from engine.config import ConfigError, load_toml, validate_config

    try:
        data = load_toml(config_path)
        data.pop("revisions", None)
        config = trial_config(validate_config(data, source=str(config_path)), batch, steps)
    except ConfigError as error:
        return _say(USER_ERROR, detail=str(error))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from engine.train.trainer import OutOfMemory

    try:
        trainer = _train(config, steps)
    except OutOfMemory as oom:
        return _say(OUT_OF_MEMORY, detail=oom.message)
    except tf.errors.ResourceExhaustedError as error:
        return _say(OUT_OF_MEMORY, detail=_first_line(error))
    except ConfigError as error:
        return _say(USER_ERROR, detail=str(error))
    except Exception as error:  # noqa: BLE001 - a CUDA OOM in another costume, or a bug
        line = f"{type(error).__name__}: {_first_line(error)}"
        if _looks_like_oom(str(error)):
            return _say(OUT_OF_MEMORY, detail=line)
        print(line, file=sys.stderr)
        return _say(ERROR, detail=line)
    return _say(FITS, **trainer)


def _train(config: RunConfig, steps: int) -> dict:
    """Set up and run a throwaway trainer in a temporary run directory."""
    import tensorflow as tf

    from engine.run.control import ControlState
    from engine.run.events import EventWriter, read_events
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
            if trainer.data.val is not None:
                # One validation batch tries the evaluation step's memory; all would take long.
                trainer.data.val = trainer.data.val.take(1)
            trainer.run()
            trainer.tensorboard.close()
        steps_seen = [e for e in read_events(run_dir / "events.jsonl") if e.type == "step"]
    outcome: dict = {
        "detail": f"{len(steps_seen)} steps",
        "train_examples": int(trainer.data.train_examples),
    }
    if len(steps_seen) > 1:  # the first step's time includes tracing the step function
        outcome["images_per_sec"] = steps_seen[-1].last().images_per_sec
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        try:
            memory = tf.config.experimental.get_memory_info(gpus[0].name)
            outcome["peak_bytes"] = int(memory["peak"])
        except (ValueError, tf.errors.OpError):
            pass
    return outcome


def _say(code: int, **fields) -> int:
    print(RESULT_PREFIX + json.dumps(fields, default=str), flush=True)
    return code


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.fitbatch_trial")
    parser.add_argument("--trial", type=Path, required=True, help="a config.toml to try")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = parser.parse_args(argv)
    return run_trial(args.trial, args.batch, args.steps)


if __name__ == "__main__":
    sys.exit(main())
