"""engine.evaluation: eval figures checked against Keras' and scikit-learn's own."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation import EvalReport, evaluate_outputs, read_report, write_report


@pytest.fixture
def outputs():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 12, size=300)
    logits = (rng.normal(size=(300, 12)) * 2).astype(np.float32)
    logits[np.arange(300), labels] += rng.normal(1.5, 1.0, size=300)  # mostly right, not always
    return labels, logits


def test_loss_accuracy_and_top5_are_keras_numbers(outputs):
    import keras

    labels, logits = outputs
    report = evaluate_outputs(labels, logits)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert report.loss == pytest.approx(float(loss), rel=1e-5)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    accuracy.update_state(labels, logits)
    assert report.accuracy == pytest.approx(float(accuracy.result()), abs=1e-7)
    top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
    top5.update_state(labels, logits)
    assert report.top5_accuracy == pytest.approx(float(top5.result()), abs=1e-7)


def test_the_matrix_and_per_class_figures_are_scikit_learns(outputs):
    from sklearn.metrics import classification_report, confusion_matrix

    labels, logits = outputs
    report = evaluate_outputs(labels, logits, class_names=[f"c{i}" for i in range(12)])
    predicted = logits.argmax(axis=1)
    assert report.confusion == confusion_matrix(labels, predicted, labels=range(12)).tolist()
    reference = classification_report(labels, predicted, labels=range(12), output_dict=True, zero_division=0)
    for row in report.classes:
        assert row.f1 == pytest.approx(reference[str(row.index)]["f1-score"])
        assert row.recall == pytest.approx(reference[str(row.index)]["recall"])
    assert report.worst_classes()[0].f1 == min(r.f1 for r in report.classes)


def test_the_worst_mistakes_are_the_most_confident_wrong_answers(outputs):
    labels, logits = outputs
    report = evaluate_outputs(labels, logits, worst=5)
    confidences = [m.confidence for m in report.mistakes]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) == 5
    assert all(m.true != m.predicted and labels[m.example] == m.true for m in report.mistakes)


def test_no_top5_with_five_classes_or_fewer_and_a_class_never_seen():
    labels = np.array([0, 1, 1, 2])
    logits = np.eye(4)[[0, 1, 2, 2]] * 5
    report = evaluate_outputs(labels, logits)
    assert report.top5_accuracy is None
    assert report.classes[3].support == 0 and report.classes[3].f1 == 0.0


def test_eval_json_round_trips(tmp_path, outputs):
    report = evaluate_outputs(*outputs)
    write_report(tmp_path, report)
    assert read_report(tmp_path) == report
    assert isinstance(read_report(tmp_path), EvalReport) and read_report(tmp_path / "none") is None
