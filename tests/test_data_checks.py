"""Dataset mistakes caught before TensorFlow loads: one line, exit 2, no run directory.

``engine.datasets.checks`` runs in ``engine.run.client.preflight``. The CLI
cases run ``convdeck run`` as a user would; one subprocess proves the
checks import neither tensorflow nor tensorflow_datasets.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import one_line_error, run_cli

from engine.config import DataConfig, RunConfig
from engine.datasets import network, tfds_catalog
from engine.datasets.checks import check_dataset
from engine.errors import ConfigError


def closed_port() -> int:
    """A local port nobody listens on: a connection to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def offline(monkeypatch):
    """Downloads go through a proxy that refuses: 'cannot be downloaded here', on any machine."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    return proxy


def prepare(data_dir: Path, name: str, splits=("train", "test"), version="3.0.1", config=None) -> Path:
    """A dataset as TFDS leaves it prepared, as far as the checks read it: its dataset_info.json."""
    folder = data_dir / name / (config or "") / version
    folder.mkdir(parents=True)
    info = {"name": name, "version": version, "splits": [{"name": split} for split in splits]}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def image_folder(root: Path, classes=("cat", "dog")) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        (root / name / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded by the check
    return root


def no_runs(home: Path) -> bool:
    runs = home / "runs"
    return not runs.exists() or not any(runs.iterdir())


# -- as a user meets them: convdeck run ---------------------------------------------------


def test_a_missing_folder(convdeck_home, tmp_path):
    error = one_line_error(run_cli("run", "--set", f"data.dataset=folder:{tmp_path}/pets"))
    assert error == (
        f"convdeck: folder:{tmp_path}/pets: no such folder; expected {tmp_path}/pets/<class_name>/<image files>"
    )
    assert no_runs(convdeck_home)


def test_a_folder_with_one_class(convdeck_home, tmp_path):
    image_folder(tmp_path / "pets", classes=("cat",))
    error = one_line_error(run_cli("run", "--set", f"data.dataset=folder:{tmp_path}/pets"))
    assert "needs at least 2 class subfolders with images, found ['cat']" in error
    assert no_runs(convdeck_home)


def test_an_unknown_tfds_name_suggests_the_close_one(convdeck_home, tmp_path):
    error = one_line_error(run_cli("run", "--set", "data.dataset=tfds:mnistt", "--set", f"data.data_dir={tmp_path}"))
    assert error.startswith("convdeck: unknown dataset 'tfds:mnistt' (did you mean 'tfds:mnist'?)")
    assert no_runs(convdeck_home)


def test_an_unprepared_tfds_dataset_that_cannot_download_says_how_to_prepare_it(convdeck_home, tmp_path, offline):
    error = one_line_error(run_cli("run", "--set", "data.dataset=tfds:mnist", "--set", f"data.data_dir={tmp_path}"))
    assert error.startswith(f"convdeck: dataset tfds:mnist is not prepared in {tmp_path} and cannot be downloaded")
    assert offline.rpartition(":")[2] in error  # the reason: the refusing proxy
    assert "tfds.load('mnist')" in error and f"to {tmp_path}/mnist on this machine" in error
    assert no_runs(convdeck_home)


def test_a_split_the_prepared_dataset_lacks(convdeck_home, tmp_path):
    prepare(tmp_path, "mnist", splits=("train", "test"))
    error = one_line_error(
        run_cli(
            "run",
            *("--set", "data.dataset=tfds:mnist", "--set", f"data.data_dir={tmp_path}"),
            *("--set", "data.val_split=tst"),
        )
    )
    assert error == (
        "convdeck: data.val_split: dataset tfds:mnist has no split 'tst' (did you mean 'test'?); "
        f"its splits are test, train (in {tmp_path}/mnist/3.0.1)"
    )
    assert no_runs(convdeck_home)


def test_a_malformed_tfds_name(convdeck_home):
    error = one_line_error(run_cli("run", "--set", "data.dataset=tfds:cifar10/plain:latest"))
    assert "'tfds:cifar10/plain:latest' is not a TFDS name; expected tfds:NAME[/CONFIG][:VERSION]" in error
    assert no_runs(convdeck_home)


def test_the_checks_load_neither_tensorflow_nor_tfds(tmp_path, offline):
    """Every mistake above, through preflight, in a fresh interpreter that then lists its modules."""
    prepare(tmp_path / "tfds", "mnist")
    script = textwrap.dedent(
        f"""
        import json, sys
        from engine.config import RunConfig
        from engine.errors import ConfigError
        from engine.run.client import preflight

        errors = []
        for data in (
            {{"dataset": "folder:{tmp_path}/missing"}},
            {{"dataset": "tfds:cifar11", "data_dir": "{tmp_path}/tfds"}},
            {{"dataset": "tfds:cifar10", "data_dir": "{tmp_path}/tfds"}},
            {{"dataset": "tfds:mnist", "data_dir": "{tmp_path}/tfds", "val_split": "tst"}},
        ):
            try:
                preflight(RunConfig(data=data))
            except ConfigError as error:
                errors.append(str(error))
        loaded = sorted(m for m in ("tensorflow", "tensorflow_datasets", "keras") if m in sys.modules)
        print(json.dumps({{"errors": errors, "loaded": loaded}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["errors"]) == 4, report
    assert report["loaded"] == []


# -- what passes, and what is left to the worker ---------------------------------------------


def test_a_prepared_dataset_with_its_splits_passes(tmp_path):
    prepare(tmp_path, "mnist")
    check_dataset(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path), train_split="train[:80%]+test"))
    check_dataset(DataConfig(dataset="tfds:MNIST", data_dir=str(tmp_path), val_split=None))
    check_dataset(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path), train_split="all"))


def test_a_dataset_prepared_but_not_registered_is_taken_from_its_files(tmp_path):
    # TFDS reads a prepared dataset it has no code for (e.g. tfds.testing's dummy_mnist) from its files.
    prepare(tmp_path, "dummy_mnist")
    check_dataset(DataConfig(dataset="tfds:dummy_mnist", data_dir=str(tmp_path)))


def test_configs_and_versions_are_looked_up_where_tfds_puts_them(tmp_path):
    prepare(tmp_path, "imagenet2012_subset", splits=("train", "validation"), version="5.0.0", config="10pct")
    ref = tfds_catalog.parse_ref("tfds:imagenet2012_subset/10pct:5.*.*")
    assert ref == tfds_catalog.TfdsRef("imagenet2012_subset", "10pct", "5.*.*")
    assert len(tfds_catalog.prepared_infos(tmp_path, ref)) == 1
    assert tfds_catalog.prepared_infos(tmp_path, tfds_catalog.parse_ref("tfds:imagenet2012_subset")) != []
    assert tfds_catalog.prepared_infos(tmp_path, tfds_catalog.parse_ref("tfds:imagenet2012_subset:4.0.0")) == []
    assert tfds_catalog.prepared_infos(tmp_path, tfds_catalog.parse_ref("tfds:imagenet2012_subset/1pct")) == []
    config = DataConfig(dataset="tfds:imagenet2012_subset/10pct", data_dir=str(tmp_path), val_split="validation")
    check_dataset(config)
    with pytest.raises(ConfigError, match="no split 'test'"):
        check_dataset(config.model_copy(update={"val_split": "test"}))


def test_an_unfinished_preparation_is_not_prepared(tmp_path, offline):
    (tmp_path / "mnist" / "incomplete.AB12CD_3.0.1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is not prepared"):
        check_dataset(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path)))


def test_a_known_unprepared_dataset_is_left_to_download_when_the_network_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(network, "probe", lambda timeout: network.Reachability())
    check_dataset(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path)))


def test_a_network_that_only_times_out_is_left_to_the_worker(tmp_path, monkeypatch):
    # A slow link is not a definite no: the worker probes again, for longer.
    monkeypatch.setattr(network, "probe", lambda timeout: network.Reachability("no answer", timed_out=True))
    check_dataset(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path)))


def test_the_default_data_dir_follows_tfds(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert tfds_catalog.data_dir_root(None) == tmp_path
    assert tfds_catalog.data_dir_root("~/data") == Path.home() / "data"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert tfds_catalog.data_dir_root(None) == Path.home() / "tensorflow_datasets"


def test_community_datasets_and_remote_data_dirs_are_left_to_the_worker():
    check_dataset(DataConfig(dataset="tfds:huggingface:no_such_set"))
    check_dataset(DataConfig(dataset="tfds:no_such_set", data_dir="gs://bucket/tfds"))


def test_digits_and_synthetic_need_no_check():
    check_dataset(RunConfig().data)
    check_dataset(DataConfig(dataset="synthetic"))


def test_the_registered_names_are_the_ones_tfds_lists():
    """The source-tree reading agrees with tfds itself (whose listing needs no TensorFlow either)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    names = tfds.list_builders(with_community_datasets=False)
    assert tfds_catalog.registered_names() == frozenset(names)
    assert {"mnist", "cifar10", "tf_flowers", "imagenet2012", "robo_ai_u_r5e"} <= set(names)
