"""Token F1 and exact match with SQuAD's answer normalisation (max over references)."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

from lorafleet.evaluate.metrics.base import MetricResult

NORMALISER = "squad-v2.0"  # lower, strip punctuation, drop a/an/the, squeeze whitespace
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, as in its official evaluation script."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1_one(prediction: str, reference: str) -> float:
    """F1 of normalised tokens; when either side normalises to nothing, 1.0 only if both do."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_one(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(predictions: list[str], references: list[list[str]], **_: Any) -> list[MetricResult]:
    per = [max(token_f1_one(p, r) for r in (refs or [""])) for p, refs in zip(predictions, references, strict=True)]
    return [MetricResult.from_mean("token_f1", per, {"normaliser": NORMALISER, "multi_reference": "max"})]


def exact_match(predictions: list[str], references: list[list[str]], **_: Any) -> list[MetricResult]:
    per = [max(exact_match_one(p, r) for r in (refs or [""])) for p, refs in zip(predictions, references, strict=True)]
    return [MetricResult.from_mean("exact_match", per, {"normaliser": NORMALISER, "multi_reference": "max"},
                                   binary=True)]
