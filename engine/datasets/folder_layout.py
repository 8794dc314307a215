"""A ``folder:PATH`` dataset's layout, checked without TensorFlow.

The run side calls :func:`check_layout` before a run directory exists; the
worker's :mod:`engine.datasets.folder` calls it again before indexing, so a
folder that changed in between still fails in one line.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigError

# The formats keras.utils.image_dataset_from_directory reads.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def folder_root(dataset: str) -> Path:
    """The folder a ``folder:PATH`` dataset names, with ``~`` expanded."""
    return Path(dataset.partition(":")[2]).expanduser()


def check_layout(root: Path, dataset: str) -> None:
    """Explain, in one line, what is wrong with a folder that is not a class-per-folder tree.

    Raises:
        ConfigError: the folder is missing, a file, empty, flat, or has fewer
            than two class subfolders holding images.
    """
    expected = f"expected {root}/<class_name>/<image files>"
    if not root.exists():
        raise ConfigError(f"{dataset}: no such folder; {expected}")
    if not root.is_dir():
        raise ConfigError(f"{dataset}: {root} is a file, not a folder; {expected}")
    entries = list(root.iterdir())
    class_folders = [entry for entry in entries if entry.is_dir()]
    if not entries:
        raise ConfigError(f"{dataset}: the folder is empty; {expected}")
    if not class_folders:
        raise ConfigError(
            f"{dataset}: no class subfolders (found {len(entries)} files at the top); {expected}"
        )
    classes_with_images = sorted(folder.name for folder in class_folders if has_images(folder))
    if not classes_with_images:
        raise ConfigError(
            f"{dataset}: no images ({' '.join(IMAGE_SUFFIXES)}) in its class subfolders; {expected}"
        )
    if len(classes_with_images) < 2:
        raise ConfigError(
            f"{dataset}: needs at least 2 class subfolders with images, "
            f"found {classes_with_images}; {expected}"
        )


def has_images(folder: Path) -> bool:
    """True at the first image file under ``folder``: a large class costs one find, not a walk."""
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*"))
