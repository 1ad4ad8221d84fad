"""Perplexity of the reference answer under each target, from the endpoint's prompt logprobs."""

from __future__ import annotations

import math

import numpy as np
from lorafleet.evaluate.metrics.base import MetricResult


def perplexity(nll: list[float], tokens: list[int]) -> MetricResult:
    """Per-sample exp(mean NLL); corpus exp(sum NLL / sum tokens), so long answers weigh more."""
    stats = np.column_stack([np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)])

    def aggregate(summed: np.ndarray, n: int) -> float:
        return float(math.exp(summed[0] / summed[1])) if summed[1] else float("nan")

    per = np.exp(stats[:, 0] / np.maximum(stats[:, 1], 1))
    config = {"source": "endpoint prompt_logprobs of the reference as the assistant turn",
              "corpus": "exp(sum nll / sum tokens)", "lower_is_better": True}
    return MetricResult("perplexity", aggregate(stats.sum(axis=0), len(nll)), per, stats, aggregate, config)
