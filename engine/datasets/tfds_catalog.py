"""What can be known about a ``tfds:NAME`` dataset without TensorFlow.

A TFDS builder needs TensorFlow (seconds to load), but the two facts a user
most often gets wrong lie on disk:

- whether NAME is prepared: TFDS keeps it as
  ``DATA_DIR/NAME[/CONFIG]/VERSION/dataset_info.json``, and that file lists
  the splits;
- whether NAME exists at all: the installed ``tensorflow_datasets`` package
  registers one dataset per folder under ``datasets/`` and one per builder
  class in its older packages, which are read here as text, never imported.

:func:`check_tfds` turns the common mistakes into one line before a run
directory exists; :mod:`engine.datasets.tfds_source` opens the dataset for
real in the worker and catches whatever this cannot see. The messages both
give are made here, once.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.config import DataConfig
from engine.datasets import network
from engine.errors import ConfigError

CATALOG_URL = "https://www.tensorflow.org/datasets/catalog/overview"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DATASET_INFO_FILE = "dataset_info.json"
# tensorflow_datasets.core.naming's builder-name pattern: NAME[/CONFIG][:VERSION][/KWARGS],
# NAME optionally "namespace:name" (a community dataset).
NAME_PATTERN = re.compile(
    r"^(?:(?P<namespace>[\w\-]+):)?(?P<name>[a-zA-Z]\w*)"
    r"(?:/(?P<config>[\w+\-.]+))?"
    r"(?::(?P<version>(?:\d+|\*)(?:\.(?:\d+|\*)){2}))?"
    r"(?:/(?P<kwargs>(?:\w+=[^,]+,?)+))?$"
)
# A split string is "name[slice]" terms joined by "+"; "all" is every split.
SPLIT_TERM = re.compile(r"\s*([\w-]+)")
ALL_SPLITS = "all"
# Packages of tensorflow_datasets that hold no dataset builders.
NOT_DATASET_PACKAGES = ("core", "testing", "scripts", "proto", "datasets", "dataset_collections")
BUILDER_CLASS = re.compile(r"^class\s+(\w+)\s*\(([^)]*)\)\s*:", re.M)
BUILDER_NAME = re.compile(r"^ {2,4}name\s*=\s*['\"](\w+)['\"]", re.M)
ABSTRACT_METHOD = re.compile(r"^ {2,4}@abc\.abstract", re.M)
# How long the run side waits to learn whether a download could work; the worker waits longer.
PREFLIGHT_PROBE_SECONDS = 1.0


@dataclass(frozen=True)
class TfdsRef:
    """A parsed ``tfds:`` reference: the dataset, and the config and version when given."""

    name: str
    config: Optional[str] = None
    version: Optional[str] = None
    namespace: Optional[str] = None


def check_tfds(config: DataConfig) -> None:
    """Refuse, in one line, a TFDS dataset that is unknown, unprepared and unloadable, or lacks a split.

    Only what is certain is refused: a dataset from a community namespace or
    a remote data dir, or one that might still download, is left to the worker.

    Raises:
        ConfigError: the name is malformed or unknown, the dataset is not
            prepared and cannot be downloaded here, or a split it lacks is asked for.
    """
    ref = parse_ref(config.dataset)
    if ref.namespace or "://" in data_dir_text(config.data_dir):
        return  # a community namespace, or a bucket: only TFDS can look there
    root = data_dir_root(config.data_dir)
    infos = prepared_infos(root, ref)
    if infos:
        check_splits(config, infos)
        return
    known = registered_names()
    if known is not None and ref.name not in known:
        raise ConfigError(unknown_dataset_message(config.dataset, known))
    reach = network.probe(PREFLIGHT_PROBE_SECONDS)
    if reach.reason and not reach.timed_out:
        raise ConfigError(not_prepared_message(config.dataset, ref.name, root, reach.reason))


def parse_ref(dataset: str) -> TfdsRef:
    """``tfds:NAME[/CONFIG][:VERSION]`` as a :class:`TfdsRef`, NAME in snake case as TFDS reads it."""
    text = dataset.partition(":")[2]
    match = NAME_PATTERN.match(text)
    if not match:
        raise ConfigError(
            f"data.dataset: {dataset!r} is not a TFDS name; expected tfds:NAME[/CONFIG][:VERSION], "
            "e.g. tfds:cifar10 or tfds:imagenet2012_subset/10pct"
        )
    return TfdsRef(
        name=snake_case(match["name"]),
        config=match["config"],
        version=match["version"],
        namespace=match["namespace"],
    )


def snake_case(name: str) -> str:
    """TFDS's own camel-to-snake rule: ``MNIST`` is ``mnist``, ``RoboAiUR5e`` ``robo_ai_u_r5e``."""
    first = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", first).lower()


def data_dir_text(data_dir: Optional[str]) -> str:
    """Where TFDS keeps prepared datasets: ``data.data_dir``, ``$TFDS_DATA_DIR``, or its default."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR


def data_dir_root(data_dir: Optional[str]) -> Path:
    """:func:`data_dir_text` as a local path."""
    return Path(data_dir_text(data_dir)).expanduser()


def prepared_infos(root: Path, ref: TfdsRef) -> list[Path]:
    """The ``dataset_info.json`` of every prepared version of ``ref`` under ``root``.

    Without a config, any config's counts: which one TFDS takes by default is
    known only to the builder, so the worker decides between them.
    """
    base = root / ref.name
    if not base.is_dir():
        return []
    if ref.config:
        version_dirs = version_folders(base / ref.config)
    else:
        version_dirs = version_folders(base)
        for child in sorted(base.iterdir()):
            version_dirs += version_folders(child)
    if ref.version:
        wanted = re.compile(re.escape(ref.version).replace(r"\*", r"\d+") + "$")
        version_dirs = [folder for folder in version_dirs if wanted.match(folder.name)]
    return [folder / DATASET_INFO_FILE for folder in version_dirs if (folder / DATASET_INFO_FILE).is_file()]


def version_folders(folder: Path) -> list[Path]:
    """Sub-folders named ``X.Y.Z``; TFDS prepares into ``incomplete.*`` first, which are not."""
    if not folder.is_dir():
        return []
    return sorted(child for child in folder.iterdir() if re.fullmatch(r"\d+\.\d+\.\d+", child.name))


def check_splits(config: DataConfig, infos: list[Path]) -> None:
    """Each split the config reads must be one the prepared dataset has."""
    available: set[str] = set()
    for info in infos:
        names = split_names(info)
        if names is None:
            return  # an unreadable info file: the worker will say what is wrong with it
        available |= names
    for field, split in (("train_split", config.train_split), ("val_split", config.val_split)):
        for term in (split or "").split("+"):
            match = SPLIT_TERM.match(term)
            if match and match[1] != ALL_SPLITS and match[1] not in available:
                hint = did_you_mean(match[1], available, prefix="")
                raise ConfigError(
                    f"data.{field}: dataset {config.dataset} has no split {match[1]!r}{hint}; "
                    f"its splits are {', '.join(sorted(available))} (in {infos[0].parent})"
                )


def split_names(info: Path) -> Optional[set[str]]:
    """The split names a ``dataset_info.json`` lists, or None when it cannot be read."""
    try:
        splits = json.loads(info.read_text()).get("splits", [])
        return {str(split["name"]) for split in splits}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


@functools.lru_cache(maxsize=1)
def registered_names() -> Optional[frozenset[str]]:
    """The dataset names the installed ``tensorflow_datasets`` registers, read as text.

    None when the package is not installed. TFDS itself lists a folder per
    dataset under ``datasets/``, and imports its older packages to register
    their builder classes (named by the class, in snake case, or by a ``name``
    attribute); here those classes are found in the source without importing it.
    """
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    datasets = package / "datasets"
    names = {child.name for child in datasets.iterdir() if is_package_folder(child)} if datasets.is_dir() else set()
    return frozenset(names | legacy_builder_names(package))


def legacy_builder_names(package: Path) -> set[str]:
    """Builder names of the classes in tfds's older packages (``image_classification/`` and kin)."""
    classes: dict[str, tuple[list[str], str, bool]] = {}
    for folder in sorted(package.iterdir()):
        if not is_package_folder(folder) or folder.name in NOT_DATASET_PACKAGES:
            continue
        for source in folder.rglob("*.py"):
            if not source.name.endswith("_test.py"):
                classes.update(builder_classes(source.read_text(errors="replace")))
    builders: set[str] = set()
    grew = True
    while grew:  # a builder is a subclass of a *Builder base, or of another builder
        before = len(builders)
        for class_name, (bases, _, _) in classes.items():
            if any(base.endswith("Builder") or base in builders for base in bases):
                builders.add(class_name)
        grew = len(builders) > before
    # Abstract bases are not registered: marked abstract, or named like a base (RluBuilder).
    return {
        classes[name][1]
        for name in builders
        if not classes[name][2] and not name.endswith("Builder")
    }


def is_package_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(("_", "."))


def builder_classes(source: str) -> dict[str, tuple[list[str], str, bool]]:
    """Each top-level class in ``source``: its base names, registered name and abstractness."""
    found = {}
    matches = list(BUILDER_CLASS.finditer(source))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(source)
        body = source[match.end() : end]
        bases = [base.strip().split(".")[-1] for base in match[2].split(",") if base.strip()]
        own_name = BUILDER_NAME.search(body)
        name = own_name[1] if own_name else snake_case(match[1])
        found[match[1]] = (bases, name, bool(ABSTRACT_METHOD.search(body)))
    return found


def did_you_mean(name: str, choices, prefix: str = "tfds:") -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def unknown_dataset_message(dataset: str, known_names) -> str:
    """The one line for a TFDS name that no installed builder has."""
    name = dataset.partition(":")[2].split("/")[0]
    return (
        f"unknown dataset {dataset!r}{did_you_mean(name, known_names)}; "
        f"TFDS names are listed at {CATALOG_URL}"
    )


def not_prepared_message(dataset: str, name: str, root: Path | str, reason: str) -> str:
    """The one line for a dataset neither prepared in ``root`` nor downloadable, and how to prepare it."""
    shown_root = home_relative(str(root))
    where = "this machine (or set data.data_dir)"
    if shown_root != DEFAULT_DATA_DIR:
        where = f"{shown_root}/{name} on this machine"
    load_name = dataset.partition(":")[2]
    return (
        f"dataset {dataset} is not prepared in {shown_root} and cannot be downloaded here "
        f'({reason}); on a machine with internet run: python -c "import tensorflow_datasets '
        f"as tfds; tfds.load('{load_name}')\" and copy {DEFAULT_DATA_DIR}/{name} to {where}"
    )


def home_relative(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path == home or path.startswith(home + os.sep) else path
