"""The dataset checks that need no TensorFlow, for the run side to make before a run exists.

``engine.run.client.preflight`` calls :func:`check_dataset`, so a missing
folder, an unknown or unprepared TFDS name or a split that is not there is
one line in well under a second, and no failed run is left behind. Nothing
here imports TensorFlow (the layer contract in pyproject.toml holds it to
that); the worker's loaders check again, and check what only decoding can.
"""

from __future__ import annotations

from engine.config import DataConfig
from engine.datasets.folder_layout import check_layout, folder_root
from engine.datasets.tfds_catalog import check_tfds


def check_dataset(config: DataConfig) -> None:
    """Raise ConfigError, in one line, for a dataset that cannot load as configured.

    ``digits`` and ``synthetic`` are made in-process and always load.
    """
    kind = config.dataset.partition(":")[0]
    if kind == "folder":
        check_layout(folder_root(config.dataset), config.dataset)
    elif kind == "tfds":
        check_tfds(config)
