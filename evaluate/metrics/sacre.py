"""BLEU and chrF through sacrebleu: corpus-level from summed n-gram statistics (so the bootstrap
recomputes the true corpus score), sentence-level with smoothing for per-sample scores."""

from __future__ import annotations

from typing import Any

import numpy as np
from lorafleet.evaluate.metrics.base import MetricResult
from sacrebleu.metrics import BLEU, CHRF


def _ref_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu wants one stream per reference position; shorter lists are padded with None."""
    width = max((len(r) for r in references), default=1) or 1
    return [[(refs[k] if k < len(refs) else None) for refs in references] for k in range(width)]


def _corpus(metric: BLEU | CHRF, predictions: list[str], references: list[list[str]]
            ) -> tuple[np.ndarray, float, str]:
    refs = [r or [""] for r in references]
    metric._check_corpus_score_args(predictions, _ref_streams(refs))
    stats = np.asarray(metric._extract_corpus_statistics(predictions, _ref_streams(refs)), dtype=float)
    stats = stats.reshape(len(predictions), -1)
    # corpus_score() would extract the statistics a second time; its score is this same sum.
    corpus = metric._compute_score_from_stats(list(stats.sum(axis=0)))
    return stats, float(corpus.score), str(metric.get_signature())


def bleu(predictions: list[str], references: list[list[str]], *, tokenize: str = "13a",
         lowercase: bool = False, **_: Any) -> list[MetricResult]:
    """Corpus BLEU (sacrebleu defaults) and exp-smoothed sentence BLEU per sample."""
    corpus_metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    stats, value, signature = _corpus(corpus_metric, predictions, references)
    sentence_metric = BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method="exp", effective_order=True)
    # A sentence score is the score of that sentence's own statistics: no second tokenisation pass.
    per = [sentence_metric._compute_score_from_stats(list(row)).score for row in stats]

    def aggregate(summed: np.ndarray, n: int) -> float:
        return float(corpus_metric._compute_score_from_stats(list(summed)).score)

    config = {"signature": signature, "per_sample": "sentence BLEU, smooth=exp, effective_order"}
    return [MetricResult("bleu", value, np.asarray(per), stats, aggregate, config)]


def chrf(predictions: list[str], references: list[list[str]], *, word_order: int = 0, **_: Any
         ) -> list[MetricResult]:
    """Corpus chrF (chrF++ with word_order=2) and sentence chrF per sample."""
    metric = CHRF(word_order=word_order)
    stats, value, signature = _corpus(metric, predictions, references)
    per = [metric._compute_score_from_stats(list(row)).score for row in stats]

    def aggregate(summed: np.ndarray, n: int) -> float:
        return float(metric._compute_score_from_stats(list(summed)).score)

    name = "chrf++" if word_order else "chrf"
    return [MetricResult(name, value, np.asarray(per), stats, aggregate,
                         {"signature": signature, "per_sample": "sentence chrF"})]
