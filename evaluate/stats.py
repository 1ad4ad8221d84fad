"""Seeded bootstrap confidence intervals, paired bootstrap differences and McNemar's test.

Resampling works on additive per-sample statistics (see metrics.base): a resample is a vector of
counts per sample, and its corpus statistic is `aggregate(counts @ stats)`. The same
count vectors are used for both sides of a paired comparison.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from lorafleet.evaluate.metrics.base import Aggregate, mean_aggregate
from scipy.stats import binomtest

CHUNK = 200  # resamples per matrix product: bounds memory at CHUNK × n floats


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class PairedResult:
    delta: float
    ci: Interval
    p_value: float
    significant: bool
    test: str


def _count_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(CHUNK, resamples - done)
        # Draw indices and count them per row: the same distribution as a multinomial, much faster.
        idx = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(float)
        done += size


def bootstrap_values(stats: np.ndarray, aggregate: Aggregate, *, resamples: int, seed: int) -> np.ndarray:
    """The metric recomputed on `resamples` seeded bootstrap resamples of the samples."""
    n = stats.shape[0]
    if n == 0:
        return np.zeros(0)
    out = []
    for counts in _count_chunks(n, resamples, seed):
        out.extend(aggregate(row, n) for row in counts @ stats)
    return np.asarray(out)


def percentile_interval(values: np.ndarray, confidence: float) -> Interval:
    if len(values) == 0:
        return Interval(float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def bootstrap_ci(stats: np.ndarray, aggregate: Aggregate, *, resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> Interval:
    """Percentile bootstrap interval of a corpus metric."""
    return percentile_interval(bootstrap_values(stats, aggregate, resamples=resamples, seed=seed), confidence)


def mean_ci(values: np.ndarray | list[float], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
            ) -> tuple[float, Interval]:
    """Mean of per-unit values (e.g. one 0/1 flip per counterfactual pair) and its bootstrap interval over units."""
    column = np.asarray(values, dtype=float).reshape(-1, 1)
    if len(column) == 0:
        return float("nan"), Interval(float("nan"), float("nan"))
    return float(column.mean()), bootstrap_ci(column, mean_aggregate, resamples=resamples, seed=seed,
                                              confidence=confidence)


def paired_bootstrap(stats_a: np.ndarray, stats_b: np.ndarray, aggregate: Aggregate, *, resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> PairedResult:
    """Difference B − A on the same samples; two-sided p from the share of resampled deltas
    on the other side of zero (Koehn 2004 style, as sacrebleu's paired bootstrap)."""
    n = stats_a.shape[0]
    if n == 0 or stats_b.shape[0] != n:
        raise ValueError("paired bootstrap needs the same, non-empty set of samples on both sides")
    observed = aggregate(stats_b.sum(axis=0), n) - aggregate(stats_a.sum(axis=0), n)
    deltas = []
    for counts in _count_chunks(n, resamples, seed):
        sums_a, sums_b = counts @ stats_a, counts @ stats_b
        deltas.extend(aggregate(b, n) - aggregate(a, n) for a, b in zip(sums_a, sums_b, strict=True))
    d = np.asarray(deltas)
    p = min(1.0, 2 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    if np.all(d == 0):
        p = 1.0
    return PairedResult(float(observed), percentile_interval(d, confidence), p, p < 1 - confidence,
                        f"paired bootstrap ({resamples} resamples, seed {seed})")


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, *, alpha: float = 0.05) -> PairedResult:
    """Exact McNemar test (binomial on the discordant pairs) for per-sample 0/1 correctness."""
    a, b = np.asarray(correct_a) > 0.5, np.asarray(correct_b) > 0.5
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_b, discordant, 0.5).pvalue)
    delta = float(b.mean() - a.mean()) if len(a) else 0.0
    return PairedResult(delta, Interval(float("nan"), float("nan")), p, p < alpha,
                        f"exact McNemar (b={only_a}, c={only_b})")
