"""Which family computes which metric name, and one entry point that runs the needed families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorafleet.evaluate.metrics import classification, meteor, rouge, sacre, squad
from lorafleet.evaluate.metrics.base import MetricResult

TextFamily = Callable[..., list[MetricResult]]

TEXT_FAMILIES: dict[str, TextFamily] = {
    "rouge": rouge.rouge,
    "bleu": sacre.bleu,
    "chrf": sacre.chrf,
    "token_f1": squad.token_f1,
    "exact_match": squad.exact_match,
    "meteor": meteor.meteor,
}
FAMILY_OF: dict[str, str] = {
    **{t: "rouge" for t in rouge.ROUGE_TYPES}, "rouge": "rouge",
    "bleu": "bleu", "chrf": "chrf", "chrf++": "chrf",
    "token_f1": "token_f1", "exact_match": "exact_match", "meteor": "meteor",
    "accuracy": "classification", "label_f1": "classification", "label_micro_f1": "classification",
    "classification": "classification",
    "perplexity": "perplexity",
}
LOWER_IS_BETTER = frozenset({"perplexity"})
METRIC_NAMES = sorted(FAMILY_OF)


def families_for(names: list[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Family → options for metric names; asking for single ROUGE types computes only those."""
    families: dict[str, dict[str, Any]] = {}
    for name in names:
        families.setdefault(FAMILY_OF[name], {}).update((options or {}).get(name) or {})
    rouge_names = {n for n in names if FAMILY_OF[n] == "rouge"}
    if rouge_names and "rouge" not in rouge_names:
        families["rouge"]["types"] = sorted(rouge_names)
    return families


def compute_metrics(families: dict[str, dict[str, Any]], predictions: list[str], references: list[list[str]],
                    *, gold_labels: list[str] | None = None, pred_labels: list[str] | None = None,
                    labels: list[str] | None = None, invalid: str = "INVALID") -> dict[str, MetricResult]:
    """Run each requested family (name → options) and return every metric it yields by name."""
    out: dict[str, MetricResult] = {}
    for family, options in families.items():
        if family == "perplexity":
            continue  # needs endpoint logprobs, not texts: see metrics.perplexity
        if family == "classification":
            if gold_labels is None or pred_labels is None:
                continue
            results = classification.classification(gold_labels, pred_labels, labels or [], invalid=invalid)
        else:
            results = TEXT_FAMILIES[family](predictions, references, **options)
        out.update({r.name: r for r in results})
    return out
