"""The one shape every metric returns: per-sample scores plus additive sufficient statistics.

A corpus figure is `aggregate(stats.sum(axis=0), n)`. Mean metrics use the per-sample score as
their only statistic; corpus BLEU/chrF use sacrebleu's own n-gram counts; label F1 uses the
flattened confusion matrix. That one form lets the bootstrap resample any metric exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Aggregate = Callable[[np.ndarray, int], float]


def mean_aggregate(summed: np.ndarray, n: int) -> float:
    return float(summed[0] / n) if n else 0.0


@dataclass
class MetricResult:
    """One metric on one target: corpus value, per-sample scores and how it was computed."""

    name: str
    value: float
    per_sample: np.ndarray
    stats: np.ndarray
    aggregate: Aggregate
    config: dict[str, Any]
    binary: bool = False  # per-sample 0/1 correctness: McNemar applies
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mean(cls, name: str, per_sample: list[float] | np.ndarray, config: dict[str, Any],
                  *, binary: bool = False) -> MetricResult:
        scores = np.asarray(per_sample, dtype=float)
        return cls(name=name, value=float(scores.mean()) if len(scores) else 0.0, per_sample=scores,
                   stats=scores.reshape(-1, 1), aggregate=mean_aggregate, config=config, binary=binary)

    def corpus_of(self, stats_sum: np.ndarray, n: int) -> float:
        return self.aggregate(stats_sum, n)
