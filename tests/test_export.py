"""``convdeck export``: the scalars table against a fabricated events file, bad input, the model files."""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import epoch_end, make_run, one_line_error, run_cli, started, step

from engine.run.export import COLUMNS, iter_rows


def _events() -> list[dict | str]:
    batched = {"type": "step", "time": 5.0, "step": 4, "epoch": 1, "loss": [0.4, 0.3], "accuracy": [0.6, 0.7],
               "learning_rate": 1e-3, "images_per_sec": [800.0, 810.0], "step_time": [0.02, 0.03]}  # fmt: skip
    return [
        started(),
        {**step(1, loss=0.9), "time": 1.0},
        {**step(2, loss=0.8), "time": 2.0},
        {"type": "validation", "time": 2.5, "step": 2, "epoch": 1, "val_loss": 0.85, "val_accuracy": 0.55},
        batched,  # steps 3 and 4 on one line
        {**epoch_end(1, 0.66), "time": 5.5, "step": 4},
        '{"type": "step", "time": 6.0, "step": 5, "loss": NaN}\n',  # NaN: msgspec refuses, the line still counts
        '{"type": "step", "ti',  # a torn line is skipped
        "\n",
        {**step(6, epoch=2, loss=0.2), "time": 7.0},
        {**epoch_end(2, 0.7), "time": 7.5},  # no step: the row of the step before
        {
            "type": "eval",
            "time": 8.0,
            "split": "validation",
            "weights": "last",
            "loss": 0.25,
            "accuracy": 0.71,
            "examples": 10,
            "step": 6,
        },  # fmt: skip
    ]


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_csv_has_one_row_per_step_with_epoch_validation_and_eval_figures_on_their_step(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    out = tmp_path / "scalars.csv"
    done = run_cli("export", "20250101-000000-a", "--csv", str(out))
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["loss"] for r in rows] == ["0.9", "0.8", "0.4", "0.3", "nan", "0.2"]
    assert [r["time"] for r in rows] == ["1.0", "2.0", "5.0", "5.0", "6.0", "7.0"]
    assert [r["images_per_sec"] for r in rows][2:4] == ["800.0", "810.0"]
    assert [r["learning_rate"] for r in rows][2:4] == ["0.001", "0.001"]
    assert rows[1]["val_loss"] == "0.85" and rows[1]["val_accuracy"] == "0.55" and rows[1]["epoch_loss"] == ""
    assert (rows[3]["epoch_loss"], rows[3]["epoch_accuracy"], rows[3]["val_accuracy"]) == ("0.3", "0.9", "0.66")
    assert rows[5]["val_accuracy"] == "0.7" and rows[5]["epoch"] == "2"
    assert (rows[5]["eval_split"], rows[5]["eval_weights"], rows[5]["eval_accuracy"]) == ("validation", "last", "0.71")
    assert rows[5]["eval_top5_accuracy"] == ""
    for quiet in (0, 2, 4):
        assert all(rows[quiet][name] == "" for name in COLUMNS[8:]), rows[quiet]


def test_json_lines_hold_the_same_rows_as_the_csv(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    done = run_cli("export", "20250101-000000-a", "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    objects = [json.loads(line) for line in (tmp_path / "s.json").read_text().splitlines()]
    rows = _rows(tmp_path / "s.csv")
    assert len(objects) == len(rows) == 6
    for obj, row in zip(objects, rows, strict=True):
        assert list(obj) == list(COLUMNS)
        for name in COLUMNS:
            if row[name] == "nan":
                assert obj[name] is None  # JSON has no NaN
            elif row[name] == "":
                assert obj[name] is None
            else:
                assert str(obj[name]) == row[name], name


def test_rows_do_not_depend_on_how_the_file_is_chunked(tmp_path, monkeypatch):
    from engine.run import export

    run_dir = make_run(tmp_path, "r", _events())
    whole = list(iter_rows(run_dir / "events.jsonl"))
    monkeypatch.setattr(export, "_CHUNK_BYTES", 7)
    assert list(iter_rows(run_dir / "events.jsonl")) == whole


def test_export_to_an_unwritable_path_is_one_line_naming_it(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    target = tmp_path / "missing-folder" / "s.csv"
    line = one_line_error(run_cli("export", "20250101-000000-a", "--csv", str(target)))
    assert str(target) in line
    line = one_line_error(run_cli("export", "20250101-000000-a", "--keras", str(target.with_suffix(".keras"))))
    assert str(target.with_suffix(".keras")) in line


def test_export_of_an_unknown_run_or_of_nothing_is_one_line(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    assert "nope" in one_line_error(run_cli("export", "nope", "--csv", str(tmp_path / "s.csv")))
    assert "--csv" in one_line_error(run_cli("export", "20250101-000000-a"))
    assert not (tmp_path / "s.csv").exists()


def test_keras_export_of_a_run_without_weights_is_one_line(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    line = one_line_error(run_cli("export", "20250101-000000-a", "--keras", str(tmp_path / "m.keras")))
    assert "no weights" in line
    assert ".keras" in one_line_error(run_cli("export", "20250101-000000-a", "--keras", str(tmp_path / "m.h5")))


@pytest.mark.slow
def test_keras_and_savedmodel_export_of_a_tiny_run(convdeck_home, tmp_path):
    done = run_cli("run", "--set", "train.epochs=1", "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (convdeck_home / "runs").iterdir()
    keras_file, saved = tmp_path / "m.keras", tmp_path / "saved"
    done = run_cli("export", run_dir.name, "--keras", str(keras_file), "--savedmodel", str(saved), timeout=600)
    assert done.returncode == 0, done.stderr
    assert keras_file.stat().st_size > 0
    assert (saved / "saved_model.pb").exists()
    import keras

    model = keras.models.load_model(keras_file, compile=False)
    assert model.count_params() > 0
    assert os.path.isdir(saved / "variables")


def test_a_failed_export_leaves_an_existing_file_as_it_was(convdeck_home, tmp_path):
    make_run(convdeck_home, "20250101-000000-a", _events())
    kept = tmp_path / "s.csv"
    kept.write_text("mine\n")
    line = one_line_error(
        run_cli("export", "20250101-000000-a", "--csv", str(kept), "--json", str(tmp_path / "no" / "s.json"))
    )
    assert str(tmp_path / "no" / "s.json") in line
    assert kept.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]
    assert "stdout" in one_line_error(run_cli("export", "20250101-000000-a", "--csv", "-", "--json", "-"))


def test_the_files_do_not_depend_on_how_the_file_is_chunked(tmp_path, monkeypatch):
    # Small chunks put step rows, merged rows and batched lines at every place in a block the writers see.
    from engine.run import export

    run_dir = make_run(tmp_path, "r", _events())

    def files() -> dict[str, bytes]:
        export.export_table(run_dir, {"csv": str(tmp_path / "s.csv"), "json": str(tmp_path / "s.json")})
        return {kind: (tmp_path / f"s.{kind}").read_bytes() for kind in ("csv", "json")}

    whole = files()
    for chunk_bytes in (7, 120, 400):
        monkeypatch.setattr(export, "_CHUNK_BYTES", chunk_bytes)
        assert files() == whole, chunk_bytes
    assert whole["json"].count(b"\n") == whole["csv"].count(b"\n") - 1 == 6
