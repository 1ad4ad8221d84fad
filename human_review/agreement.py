"""Agreement and ranking statistics for review queues.

Quadratic κ (scikit-learn) and Krippendorff's α (the `krippendorff` package) come from the core
module lorafleet.correlation, which evaluate uses too; a Bradley–Terry ranking is computed here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

from lorafleet import correlation
from lorafleet.correlation import Level


def cohen_kappa_quadratic(a: Sequence[int], b: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Quadratic-weighted Cohen's kappa of two raters' paired grades (scikit-learn); nan when undefined."""
    return correlation.quadratic_kappa(a, b, labels)


def krippendorff_alpha(units: Sequence[Sequence[float | None]], level: Level = "interval") -> float:
    """Krippendorff's alpha (`krippendorff`); `units` holds each item's grades (None = missing); nan if undefined."""
    return correlation.krippendorff_alpha(units, level)


def bootstrap_ci(units: Sequence, stat: Callable[[Sequence], float], *, reps: int = 300,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float] | None:
    """Percentile CI of `stat` over units resampled with replacement; None when too few units."""
    return correlation.bootstrap_ci(units, stat, reps=reps, confidence=1 - alpha, seed=seed)


def bradley_terry(comparisons: Sequence[tuple[Hashable, Hashable, float]], *, iters: int = 500,
                  prior: float = 0.5) -> dict[Hashable, float]:
    """Strengths (summing to 1) from (a, b, score of a: 1 win / 0.5 tie / 0 loss), by MM iterations.

    `prior` adds that many virtual ties between every pair so a target that never lost stays finite.
    """
    targets = sorted({t for a, b, _ in comparisons for t in (a, b)}, key=str)
    if len(targets) < 2:
        return {t: 1.0 for t in targets}
    idx = {t: i for i, t in enumerate(targets)}
    m = len(targets)
    wins = np.full((m, m), prior / 2)
    np.fill_diagonal(wins, 0)
    for a, b, s in comparisons:
        wins[idx[a], idx[b]] += s
        wins[idx[b], idx[a]] += 1 - s
    games = wins + wins.T
    p = np.ones(m) / m
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(1)
        new = wins.sum(1) / denom
        new /= new.sum()
        if np.abs(new - p).max() < 1e-10:
            p = new
            break
        p = new
    return {t: float(p[idx[t]]) for t in targets}


def bradley_terry_ci(comparisons: Sequence[tuple[Hashable, Hashable, float]], *, reps: int = 200,
                     seed: int = 0) -> dict[Hashable, tuple[float, float]]:
    """Percentile 95% CIs of each target's Bradley–Terry strength, resampling comparisons."""
    rng = np.random.default_rng(seed)
    draws: dict[Hashable, list[float]] = {}
    for _ in range(reps):
        sample = [comparisons[i] for i in rng.integers(0, len(comparisons), len(comparisons))]
        for t, v in bradley_terry(sample, iters=200).items():
            draws.setdefault(t, []).append(v)
    return {t: (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) for t, v in draws.items()}
