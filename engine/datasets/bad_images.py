"""Image files that cannot be read or decoded: found before training, and named.

A decode error inside a tf.data pipeline names no file and ends the run
wherever in an epoch it strikes. So a folder dataset decodes every file
once when it is opened, in parallel, with the very decoder training uses:
tf.data's ``ignore_errors`` drops the files that fail without saying which,
and the paths that come through are the good ones, so the rest are named.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import tensorflow as tf

from engine.datasets.sources import AUTOTUNE, on_host

# How many skipped files a log line names; the count says how many there were in all.
NAMED_IN_LOG = 5
CHECK_BATCH = 1024
Decoder = Callable[[tf.Tensor], tf.Tensor]


@on_host
def undecodable(paths: Sequence[str], decode: Decoder) -> list[str]:
    """The paths that ``decode`` fails on (unreadable or not a valid image), in the given order."""
    if not paths:
        return []

    def decoded(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The shape depends on the pixels, so the decode cannot be pruned from the graph.
        return path, tf.shape(decode(path))

    checked = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .map(decoded, num_parallel_calls=AUTOTUNE, deterministic=False)
        .ignore_errors()
        .batch(CHECK_BATCH)
    )
    good = {path.decode() for batch, _ in checked.as_numpy_iterator() for path in batch}
    return [path for path in paths if path not in good]


@on_host
def decode_error(path: str, decode: Decoder) -> str:
    """Why ``path`` does not decode, in TensorFlow's words without its op decorations."""
    try:
        decode(tf.constant(path))
    except tf.errors.OpError as error:
        text = re.sub(r"^\{\{.*?\}\}\s*", "", error.message.strip())
        return re.sub(r"\s*\[Op:.*$", "", text, flags=re.S).strip().splitlines()[0]
    return "it could not be read a moment ago"


def bad_image_message(dataset: str, bad: Sequence[str], decode: Decoder) -> str:
    """The one line that ends a run over a file that cannot be decoded."""
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return (
        f"{dataset}: cannot decode {bad[0]}: {decode_error(bad[0], decode)}{more}; "
        "replace or remove it, or set data.skip_bad_images = true to train without it"
    )


def skipped_message(dataset: str, root: Path, bad: Sequence[str]) -> str:
    """The log line that says which files a run left out."""
    named = [str(Path(path).relative_to(root)) for path in bad[:NAMED_IN_LOG]]
    rest = ", ..." if len(bad) > NAMED_IN_LOG else ""
    images = "image" if len(bad) == 1 else "images"
    return (
        f"{dataset}: skipped {len(bad)} {images} that cannot be decoded "
        f"(data.skip_bad_images): {', '.join(named)}{rest}"
    )
