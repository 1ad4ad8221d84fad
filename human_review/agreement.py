"""Agreement and ranking statistics: pure functions over plain lists, numpy only.

- quadratic-weighted Cohen's kappa for two raters (matches scikit-learn's cohen_kappa_score),
- Krippendorff's alpha for any number of raters with missing data (nominal/ordinal/interval),
- percentile bootstrap CIs over items, pairwise win rates, a Bradley–Terry ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Literal

import numpy as np

Level = Literal["nominal", "ordinal", "interval"]


def cohen_kappa_quadratic(a: Sequence[int], b: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Quadratic-weighted Cohen's kappa of two raters' paired grades; nan when undefined."""
    if len(a) != len(b) or not a:
        raise ValueError("need two equally long, non-empty lists of grades")
    labels = sorted(set(a) | set(b)) if labels is None else list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    observed = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        observed[index[x], index[y]] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    weights = (i - j) ** 2
    denom = (weights * expected).sum()
    return float("nan") if denom == 0 else float(1 - (weights * observed).sum() / denom)


def krippendorff_alpha(units: Sequence[Sequence[float | None]], level: Level = "interval") -> float:
    """Krippendorff's alpha; `units` holds each item's grades (None = missing). nan when undefined."""
    values = [[v for v in u if v is not None] for u in units]
    values = [u for u in values if len(u) >= 2]  # only pairable units carry information
    if not values:
        return float("nan")
    cats = sorted({v for u in values for v in u})
    if len(cats) < 2:
        return 1.0 if sum(len(u) for u in values) > 0 else float("nan")
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    coincidence = np.zeros((k, k))
    for u in values:
        counts = np.zeros(k)
        for v in u:
            counts[index[v]] += 1
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    n_c = coincidence.sum(1)
    n = n_c.sum()
    delta = _delta(np.asarray(cats, dtype=float), n_c, level)
    expected = (np.outer(n_c, n_c) * delta).sum()
    return float("nan") if expected == 0 else float(1 - (n - 1) * (coincidence * delta).sum() / expected)


def _delta(cats: np.ndarray, n_c: np.ndarray, level: Level) -> np.ndarray:
    if level == "nominal":
        return 1.0 - np.eye(len(cats))
    if level == "interval":
        return (cats[:, None] - cats[None, :]) ** 2
    cum = np.cumsum(n_c)
    k = len(cats)
    out = np.zeros((k, k))
    for c in range(k):
        for d in range(c + 1, k):
            between = cum[d] - (cum[c - 1] if c else 0)  # n_c + … + n_d
            out[c, d] = out[d, c] = (between - (n_c[c] + n_c[d]) / 2) ** 2
    return out


def bootstrap_ci(units: Sequence, stat: Callable[[Sequence], float], *, reps: int = 300,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float] | None:
    """Percentile CI of `stat` over units resampled with replacement; None when too few units."""
    if len(units) < 3:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(reps):
        sample = [units[i] for i in rng.integers(0, len(units), len(units))]
        value = stat(sample)
        if not np.isnan(value):
            stats.append(value)
    if len(stats) < reps // 2:
        return None
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


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
