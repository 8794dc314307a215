"""``convdeck eval`` on a real (tiny) run: its figures are scikit-learn's on the saved model's predictions."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import event_dicts, one_line_error, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "CONVDECK_HOME": str(home)}
    done = run_cli("run", "--set", "train.epochs=1", "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    run_dir = next((home / "runs").iterdir())
    return home, run_dir, env


def test_eval_matches_scikit_learn_on_model_keras_predictions(trained_run):
    import keras
    from sklearn.metrics import confusion_matrix, f1_score

    from engine.run.store import read_config
    from engine.train.data import load_data

    home, run_dir, env = trained_run
    done = run_cli("eval", run_dir.name, "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    config = read_config(run_dir)
    data = load_data(config.data, config.train.batch_size, seed=config.train.seed)
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    labels = np.concatenate([y.numpy() for _, y in data.val])
    predicted = np.concatenate([model.predict(x, verbose=0).argmax(axis=1) for x, _ in data.val])
    assert report["confusion"] == confusion_matrix(labels, predicted, labels=range(10)).tolist()
    per_class_f1 = f1_score(labels, predicted, average=None, labels=range(10), zero_division=0)
    assert [c["f1"] for c in report["classes"]] == pytest.approx(per_class_f1.tolist())
    assert report["accuracy"] == pytest.approx(float((labels == predicted).mean()))
    assert (run_dir / "eval.json").exists()
    pngs = sorted((run_dir / "mistakes").glob("*.png"))
    assert len(pngs) == min(len(report["mistakes"]), 16) and pngs[0].read_bytes()[:4] == b"\x89PNG"


def test_a_finished_run_is_evaluated_by_its_worker_before_its_finished_event(trained_run):
    home, run_dir, env = trained_run
    events = event_dicts(run_dir / "events.jsonl")
    assert [e["type"] for e in events[-2:]] == ["eval", "finished"]
    evaluated = events[-2]
    assert (evaluated["trigger"], evaluated["split"], evaluated["weights"]) == ("end", "validation", "last")
    # The worker's model in memory scores what its saved weights score when loaded again.
    done = run_cli("eval", run_dir.name, "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert evaluated["accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(report["loss"], abs=1e-4)
    assert evaluated["examples"] == report["examples"]


def test_eval_of_the_best_weights_scores_the_recorded_best(trained_run):
    home, run_dir, env = trained_run
    best = [e for e in event_dicts(run_dir / "events.jsonl") if e["type"] == "best_checkpoint"][-1]
    assert best["metric"] == "val_accuracy"
    done = run_cli("eval", run_dir.name, "--weights", "best", "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["weights"] == "best"
    assert report["accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_eval_of_a_run_without_best_weights_is_one_line(trained_run):
    home, run_dir, env = trained_run
    # The same run as one trained with train.best_metric = "none" would leave it: no best/.
    bare = run_dir.with_name(run_dir.name + "-nobest")
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
    shutil.rmtree(bare / "checkpoints" / "best")
    done = run_cli("eval", bare.name, "--weights", "best", env=env, timeout=600)
    assert done.returncode == 2
    assert "no best checkpoint yet" in one_line_error(done)


def test_eval_of_an_unknown_run_is_one_line(trained_run):
    home, run_dir, env = trained_run
    done = run_cli("eval", "nosuchrun", env=env)
    assert done.returncode == 2 and "no run matches 'nosuchrun'" in one_line_error(done)
