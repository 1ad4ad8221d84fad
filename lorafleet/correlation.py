"""Human-judgement statistics shared by evaluate and human_review (which may not import each other).

- agreement of two raters (quadratic κ, scikit-learn) or many with gaps (Krippendorff's α, `krippendorff`),
  each with a percentile bootstrap CI over items;
- a Wilson interval for a win rate;
- rank correlation of a metric with grades (Spearman and Kendall, scipy), with bootstrap CIs, per
  metric × rubric criterion. Too few shared samples is "not enough data", never a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

Level = Literal["nominal", "ordinal", "interval", "ratio"]
MIN_SHARED = 10  # the fewest shared samples a correlation is computed over
NOT_ENOUGH = "not enough data"


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# ---- agreement -------------------------------------------------------------------------------


def quadratic_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Quadratic-weighted Cohen's κ of two raters' paired grades (scikit-learn); nan when undefined."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b) or len(a) == 0:
        raise ValueError("need two equally long, non-empty lists of grades")
    if len(set(a) | set(b)) < 2:
        return float("nan")  # one category in all: chance agreement is total, κ is 0/0
    with np.errstate(divide="ignore", invalid="ignore"):
        value = cohen_kappa_score(list(a), list(b), labels=None if labels is None else list(labels),
                                  weights="quadratic")
    return float(value)


def krippendorff_alpha(units: Sequence[Sequence[float | None]], level: Level = "interval") -> float:
    """Krippendorff's α (`krippendorff` package); `units` holds each item's grades, None = missing.

    nan when no item has two grades; 1.0 when every grade is the same value (no disagreement at all).
    """
    import krippendorff

    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if not pairable:
        return float("nan")
    if len({v for u in pairable for v in u}) < 2:
        return 1.0  # the package refuses a one-value domain; nobody disagrees
    width = max(len(u) for u in units)
    data = np.full((width, len(units)), np.nan)  # the package wants raters × units
    for j, u in enumerate(units):
        for i, v in enumerate(u):
            if v is not None:
                data[i, j] = v
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))


def bootstrap_ci(units: Sequence, stat: Callable[[Sequence], float], *, reps: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile CI of `stat` over units resampled with replacement; None when too few units or draws."""
    if len(units) < 3:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(reps):
        value = stat([units[i] for i in rng.integers(0, len(units), len(units))])
        if not math.isnan(value):
            draws.append(value)
    if len(draws) < reps // 2:  # mostly undefined resamples: a CI would describe a different population
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


class Agreement(BaseModel):
    """One agreement statistic with its bootstrap CI over items; value None when undefined."""

    statistic: Literal["quadratic_kappa", "krippendorff_alpha"]
    value: float | None
    ci: tuple[float, float] | None = None
    n: int = Field(description="Items the statistic is computed over.")
    confidence: float = 0.95
    note: str | None = None


def quadratic_kappa_ci(a: Sequence[int], b: Sequence[int], *, labels: Sequence[int] | None = None,
                       reps: int = 500, confidence: float = 0.95, seed: int = 0,
                       min_items: int = 5) -> Agreement:
    """Quadratic κ of paired grades (a[i], b[i]) with a bootstrap CI over the pairs."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"need paired grades: {len(a)} vs {len(b)}")
    if n < min_items:
        return Agreement(statistic="quadratic_kappa", value=None, n=n, confidence=confidence,
                         note=f"{NOT_ENOUGH}: {n} shared item(s), need {min_items}")
    pairs = list(zip(a, b, strict=True))

    def stat(sample: Sequence[tuple[int, int]]) -> float:
        x, y = zip(*sample, strict=True)
        return quadratic_kappa(x, y, labels)

    value = _nan_to_none(quadratic_kappa(a, b, labels))
    ci = bootstrap_ci(pairs, stat, reps=reps, confidence=confidence, seed=seed) if value is not None else None
    return Agreement(statistic="quadratic_kappa", value=value, ci=ci, n=n, confidence=confidence,
                     note=None if value is not None else "undefined: a single grade value throughout")


def alpha_ci(units: Sequence[Sequence[float | None]], *, level: Level = "ordinal", reps: int = 500,
             confidence: float = 0.95, seed: int = 0, min_items: int = 5) -> Agreement:
    """Krippendorff's α over items × raters (None = missing) with a bootstrap CI over items."""
    pairable = [u for u in units if sum(v is not None for v in u) >= 2]
    n = len(pairable)
    if n < min_items:
        return Agreement(statistic="krippendorff_alpha", value=None, n=n, confidence=confidence,
                         note=f"{NOT_ENOUGH}: {n} item(s) with two grades, need {min_items}")
    value = _nan_to_none(krippendorff_alpha(pairable, level))
    ci = bootstrap_ci(pairable, lambda u: krippendorff_alpha(u, level), reps=reps, confidence=confidence,
                      seed=seed) if value is not None else None
    return Agreement(statistic="krippendorff_alpha", value=value, ci=ci, n=n, confidence=confidence)


# ---- rates -----------------------------------------------------------------------------------


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion successes/n; None when n is 0."""
    from scipy.stats import norm

    if n <= 0:
        return None
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- correlation -----------------------------------------------------------------------------


class Correlation(BaseModel):
    """Spearman ρ and Kendall τ-b of one metric against one criterion's grades, over shared samples.

    With fewer than `min_shared` samples (or a constant side) the values are None and `note` says why.
    """

    metric: str
    criterion: str
    n: int = Field(description="Samples that have both a metric score and a grade.")
    spearman: float | None = None
    spearman_ci: tuple[float, float] | None = None
    kendall: float | None = None
    kendall_ci: tuple[float, float] | None = None
    note: str | None = Field(default=None, description="'not enough data: …' or 'undefined: …' when no values.")

    @property
    def enough(self) -> bool:
        return self.spearman is not None


class CorrelationTable(BaseModel):
    """Every metric × criterion correlation of one set of graded samples."""

    samples: int = Field(description="Samples with at least one grade and one metric score.")
    min_shared: int = MIN_SHARED
    confidence: float = 0.95
    reps: int = 1000
    seed: int = 0
    rows: list[Correlation] = Field(default_factory=list)

    def get(self, metric: str, criterion: str) -> Correlation | None:
        return next((r for r in self.rows if r.metric == metric and r.criterion == criterion), None)


def _spearman_many(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair (average ranks, so ties are handled as scipy does); nan if constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def _kendall_many(sx: np.ndarray, sy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each resample, from the pairwise sign matrices of the full sample.

    A resample's pairs are sign[idx_i, idx_j]; a drawn-twice sample pairs with itself as a tie in both,
    exactly as scipy.stats.kendalltau would count it on the resampled arrays.
    """
    out = np.empty(len(idx))
    chunk = max(1, 4_000_000 // (idx.shape[1] ** 2))
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        a = sx[part[:, :, None], part[:, None, :]]
        b = sy[part[:, :, None], part[:, None, :]]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start:start + chunk] = (a * b).sum((1, 2)) / np.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2)))
    return out


def _percentile(draws: np.ndarray, confidence: float) -> tuple[float, float] | None:
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


def rank_correlation(x: Sequence[float], y: Sequence[float], *, metric: str = "metric", criterion: str = "grade",
                     min_shared: int = MIN_SHARED, reps: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> Correlation:
    """Spearman and Kendall (scipy) of paired values with percentile bootstrap CIs over the pairs."""
    from scipy.stats import kendalltau, spearmanr

    n = len(x)
    if n != len(y):
        raise ValueError(f"need paired values: {len(x)} vs {len(y)}")
    if n < min_shared:
        return Correlation(metric=metric, criterion=criterion, n=n,
                           note=f"{NOT_ENOUGH}: {n} shared sample(s), need {min_shared}")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        side = "metric scores" if np.ptp(xa) == 0 else "grades"
        return Correlation(metric=metric, criterion=criterion, n=n, note=f"undefined: the {side} are all equal")
    rho = float(spearmanr(xa, ya).statistic)
    tau = float(kendalltau(xa, ya).statistic)
    idx = np.random.default_rng(seed).integers(0, n, (reps, n))
    rho_ci = _percentile(_spearman_many(xa[idx], ya[idx]), confidence)
    if n <= 100:  # the sign-matrix form is O(n²) per draw: fastest for small n, scipy's O(n log n) beyond
        sx, sy = np.sign(xa[:, None] - xa[None, :]), np.sign(ya[:, None] - ya[None, :])
        tau_draws = _kendall_many(sx, sy, idx)
    else:
        tau_draws = np.array([kendalltau(xa[i], ya[i]).statistic for i in idx], dtype=float)
    tau_ci = _percentile(tau_draws, confidence)
    return Correlation(metric=metric, criterion=criterion, n=n, spearman=rho, spearman_ci=rho_ci,
                       kendall=tau, kendall_ci=tau_ci)


def correlation_table(samples: Sequence[tuple[Mapping[str, float], Mapping[str, float]]], *,
                      min_shared: int = MIN_SHARED, reps: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> CorrelationTable:
    """Correlate every metric with every criterion over (metric scores, grades) per sample.

    Grades of one sample by several reviewers should be averaged by the caller first. A sample counts
    for a cell when it has that metric and that criterion; non-finite values are left out.
    """
    metrics = sorted({m for scores, _ in samples for m in scores})
    criteria = sorted({c for _, grades in samples for c in grades})
    table = CorrelationTable(samples=sum(1 for s, g in samples if s and g), min_shared=min_shared,
                             confidence=confidence, reps=reps, seed=seed)
    for metric in metrics:
        for criterion in criteria:
            pairs = [(float(s[metric]), float(g[criterion])) for s, g in samples
                     if _finite(s.get(metric)) and _finite(g.get(criterion))]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            table.rows.append(rank_correlation(xs, ys, metric=metric, criterion=criterion, min_shared=min_shared,
                                               reps=reps, confidence=confidence, seed=seed))
    return table


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def format_cell(value: float | None, ci: tuple[float, float] | None, note: str | None = None) -> str:
    """'0.812 [0.701, 0.893]', or the note ('not enough data: …') when there is no value."""
    if value is None:
        return note or NOT_ENOUGH
    return f"{value:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]")
