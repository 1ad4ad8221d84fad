"""Label metrics: accuracy, macro/micro F1 over the declared label set, per-class precision,
recall and false-positive rate. Unparseable outputs are the explicit INVALID class, so they count
as wrong answers instead of vanishing."""

from __future__ import annotations

import warnings
from importlib.metadata import version
from typing import Any

import numpy as np
from lorafleet.evaluate.metrics.base import MetricResult
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def _confusion_stats(gold: list[str], pred: list[str], classes: list[str]) -> np.ndarray:
    """One row per sample: a one-hot of its (gold, pred) cell in the flattened confusion matrix."""
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    stats = np.zeros((len(gold), k * k))
    for row, (g, p) in enumerate(zip(gold, pred, strict=True)):
        stats[row, index[g] * k + index[p]] = 1.0
    return stats


def _f1_from_confusion(cm: np.ndarray, n_declared: int) -> tuple[float, float]:
    """(macro F1, micro F1) over the first n_declared classes, zero_division=0 like scikit-learn."""
    tp = np.diag(cm)[:n_declared]
    pred_tot = cm.sum(axis=0)[:n_declared]
    gold_tot = cm.sum(axis=1)[:n_declared]
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = pred_tot + gold_tot
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    micro_denom = pred_tot.sum() + gold_tot.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom else 0.0
    return float(f1.mean()) if n_declared else 0.0, micro


def classification(gold: list[str], pred: list[str], labels: list[str], invalid: str = "INVALID",
                   **_: Any) -> list[MetricResult]:
    """Accuracy, label_f1 (macro), label_micro_f1, with per-class details from scikit-learn."""
    classes = list(labels) + [c for c in sorted(set(gold) | set(pred) | {invalid}) if c not in labels]
    k, n_declared = len(classes), len(labels)
    stats = _confusion_stats(gold, pred, classes)
    correct = np.array([float(g == p) for g, p in zip(gold, pred, strict=True)])
    config = {"library": f"scikit-learn {version('scikit-learn')}", "labels": list(labels),
              "invalid_class": invalid, "average_over": "declared labels", "zero_division": 0}

    def macro(summed: np.ndarray, n: int) -> float:
        return _f1_from_confusion(summed.reshape(k, k), n_declared)[0]

    def micro(summed: np.ndarray, n: int) -> float:
        return _f1_from_confusion(summed.reshape(k, k), n_declared)[1]

    details = per_class(gold, pred, labels, classes)
    total = stats.sum(axis=0)
    results = [
        MetricResult.from_mean("accuracy", correct, config, binary=True),
        MetricResult("label_f1", macro(total, len(gold)), correct, stats, macro, config, details=details),
        MetricResult("label_micro_f1", micro(total, len(gold)), correct, stats, micro, config),
    ]
    results[0].details = {"invalid_rate": float(np.mean([p == invalid for p in pred])) if pred else 0.0}
    return results


def per_class(gold: list[str], pred: list[str], labels: list[str], classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1, support and false-positive rate for each declared label."""
    if not gold:
        return {}
    with warnings.catch_warnings():
        # scikit-learn warns when one class is all it sees; the label set is passed, so the shape is right.
        warnings.simplefilter("ignore", UserWarning)
        p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
        cm = confusion_matrix(gold, pred, labels=classes)
    out: dict[str, Any] = {}
    for i, label in enumerate(labels):
        fp = cm[:, i].sum() - cm[i, i]
        negatives = cm.sum() - cm[i, :].sum()
        out[label] = {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i]),
                      "fpr": float(fp / negatives) if negatives else 0.0}
    return {"per_class": out, "confusion": {"classes": classes, "matrix": cm.tolist()}}
