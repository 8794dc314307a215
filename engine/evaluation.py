"""Evaluation figures from a model's outputs: the TF-free half of ``convdeck eval``.

The worker (engine.train.evaluate) runs the model over a split and hands
its labels and logits here. Every figure comes from scikit-learn's metrics,
so it is the number a careful user would compute: the confusion matrix,
per-class precision, recall and F1, accuracy and top-5 accuracy. The loss
is Keras' sparse categorical cross-entropy from logits, averaged over
examples. The result is plain data: the ``eval`` event and ``eval.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

EVAL_FILE = "eval.json"
MISTAKES_DIR = "mistakes"
"""The run's worst mistakes as PNG files, one per entry of ``EvalReport.mistakes``, in its order."""
TOP_K = 5
WORST_MISTAKES = 16


@dataclass
class ClassFigures:
    """One class's row of the per-class table."""

    index: int
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Mistake:
    """A validation example the model got wrong, with the confidence of its wrong answer."""

    example: int
    true: int
    predicted: int
    confidence: float


@dataclass
class EvalReport:
    """Everything ``convdeck eval`` reports for one split of one run's weights."""

    split: str
    weights: str
    examples: int
    loss: float
    accuracy: float
    top5_accuracy: float | None
    class_names: list[str]
    confusion: list[list[int]]
    classes: list[ClassFigures] = field(default_factory=list)
    mistakes: list[Mistake] = field(default_factory=list)

    def worst_classes(self) -> list[ClassFigures]:
        """Classes by F1, worst first (ties: more examples first)."""
        return sorted(self.classes, key=lambda c: (c.f1, -c.support, c.index))

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> EvalReport:
        data = dict(data)
        data["classes"] = [ClassFigures(**c) for c in data.get("classes", [])]
        data["mistakes"] = [Mistake(**m) for m in data.get("mistakes", [])]
        return cls(**data)


def evaluate_outputs(
    labels: np.ndarray,
    logits: np.ndarray,
    class_names: list[str] | None = None,
    split: str = "validation",
    weights: str = "last",
    worst: int = WORST_MISTAKES,
) -> EvalReport:
    """The report for integer ``labels`` (N,) and ``logits`` (N, C).

    Raises:
        ValueError: empty or mismatched inputs.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(labels) != len(logits) or len(labels) == 0:
        raise ValueError(f"need N labels and N x C logits; got {labels.shape} and {logits.shape}")
    classes = logits.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(classes)]
    everyone = np.arange(classes)
    predicted = logits.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everyone, zero_division=0
    )
    top5 = None
    if classes > TOP_K:
        top5 = float(top_k_accuracy_score(labels, logits, k=TOP_K, labels=everyone))
    probabilities = _softmax(logits)
    return EvalReport(
        split=split,
        weights=weights,
        examples=int(len(labels)),
        loss=_cross_entropy(labels, logits),
        accuracy=float((predicted == labels).mean()),
        top5_accuracy=top5,
        class_names=names,
        confusion=confusion_matrix(labels, predicted, labels=everyone).tolist(),
        classes=[
            ClassFigures(i, names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i in range(classes)
        ],
        mistakes=_worst_mistakes(labels, predicted, probabilities, worst),
    )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _cross_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy from logits (log-sum-exp, stable)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    picked = shifted[np.arange(len(labels)), labels]
    value = float((log_norm - picked).mean())
    return value if math.isfinite(value) else float("nan")


def _worst_mistakes(labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray, k: int) -> list[Mistake]:
    """The k wrong answers given with the most confidence."""
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    return [
        Mistake(int(i), int(labels[i]), int(predicted[i]), float(probabilities[i, predicted[i]])) for i in order
    ]


def mistake_image_path(run_dir: Path, rank: int, mistake: Mistake) -> Path:
    """Where the picture of the report's ``rank``-th mistake is (``mistakes/NN-true-T-pred-P.png``)."""
    return run_dir / MISTAKES_DIR / f"{rank:02d}-true-{mistake.true}-pred-{mistake.predicted}.png"


def write_report(run_dir: Path, report: EvalReport) -> Path:
    """``eval.json`` in the run directory, written whole or not at all."""
    path = run_dir / EVAL_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.as_json(), indent=1))
    os.replace(tmp, path)
    return path


def read_report(run_dir: Path) -> EvalReport | None:
    """The run's last evaluation, or None when it has none (or an unreadable one)."""
    try:
        return EvalReport.from_json(json.loads((run_dir / EVAL_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
