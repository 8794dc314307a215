"""``convdeck export --keras/--savedmodel``, the TensorFlow half: save a run's weights as a model.

``python -m engine.train.export_model RUN_DIR --weights best --keras FILE
--savedmodel DIR`` restores the weights as ``convdeck eval`` does
(:func:`engine.train.evaluate.load_weights`) and saves them; the CLI starts it
in a process of its own (engine/run/export.py says which weights), so the CLI never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.errors import ConfigError


def export_model(run_dir: Path, weights: str, keras_file: str | None, savedmodel_dir: str | None) -> None:
    """Restore the run's ``weights`` and save them as a ``.keras`` file and/or a SavedModel folder.

    Raises:
        ConfigError: the run has no such weights, or its data cannot be opened (for the model's shapes).
    """
    from engine.run.store import read_config
    from engine.train.data import open_raw
    from engine.train.evaluate import load_weights

    config = read_config(run_dir)
    # The model's input shape and class count are the data's: open it as training did.
    raw = open_raw(config.data)
    model = load_weights(run_dir, config, raw.input_shape, raw.num_classes, weights)
    if keras_file is not None:
        model.save(keras_file)
    if savedmodel_dir is not None:
        model.export(savedmodel_dir, verbose=False)


def main(argv: list[str] | None = None) -> int:
    """The subprocess entry: exit 2 with one line on a user's mistake."""
    parser = argparse.ArgumentParser(prog="python -m engine.train.export_model")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--weights", choices=("best", "last"), default="best")
    parser.add_argument("--keras")
    parser.add_argument("--savedmodel")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        export_model(args.run_dir, args.weights, args.keras, args.savedmodel)
    except ConfigError as error:
        print(f"convdeck: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"convdeck: cannot write {error.filename or args.keras or args.savedmodel}: {error.strerror}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
