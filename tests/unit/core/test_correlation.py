"""lorafleet.correlation: κ/α with CIs, Wilson intervals and metric ↔ grade rank correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, kendalltau, spearmanr
from sklearn.metrics import cohen_kappa_score

from lorafleet import correlation as C


def _rule(n: int, seed: int, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Metric scores and grades that follow grade = round(1 + 4·score) + noise, clipped to 1..5."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    return x, np.clip(np.round(1 + 4 * x + rng.normal(0, noise, n)), 1, 5)


def test_rank_correlation_matches_scipy_and_its_ci_excludes_zero_for_a_known_rule() -> None:
    x, y = _rule(60, 0)
    c = C.rank_correlation(x, y, metric="rougeL", criterion="accuracy")
    assert c.spearman == pytest.approx(spearmanr(x, y).statistic)
    assert c.kendall == pytest.approx(kendalltau(x, y).statistic)
    assert c.spearman > 0.8 and c.spearman_ci[0] > 0.6 and c.spearman_ci[0] < c.spearman < c.spearman_ci[1]
    assert c.kendall_ci[0] > 0.4 and c.enough and c.note is None


def test_a_random_rule_gives_a_ci_containing_zero() -> None:
    rng = np.random.default_rng(5)
    c = C.rank_correlation(rng.random(60), rng.integers(1, 6, 60).astype(float))
    assert c.spearman_ci[0] < 0 < c.spearman_ci[1] and c.kendall_ci[0] < 0 < c.kendall_ci[1]


def test_vectorised_bootstrap_equals_scipy_on_each_resample() -> None:
    x, y = _rule(30, 1)
    idx = np.random.default_rng(0).integers(0, 30, (8, 30))
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    assert C._kendall_many(sx, sy, idx) == pytest.approx([kendalltau(x[i], y[i]).statistic for i in idx])
    assert C._spearman_many(x[idx], y[idx]) == pytest.approx([spearmanr(x[i], y[i]).statistic for i in idx])


def test_large_samples_use_scipys_kendall_and_agree() -> None:
    x, y = _rule(150, 2, noise=2.0)
    c = C.rank_correlation(x, y, reps=200)
    assert c.kendall_ci[0] < c.kendall < c.kendall_ci[1]


def test_too_few_shared_samples_is_not_enough_data_never_a_number() -> None:
    x, y = _rule(9, 0)
    c = C.rank_correlation(x, y)
    assert c.spearman is c.kendall is c.spearman_ci is None and not c.enough
    assert c.note == "not enough data: 9 shared sample(s), need 10"
    assert C.format_cell(c.spearman, c.spearman_ci, c.note) == c.note
    assert C.rank_correlation(x, y, min_shared=5).enough
    flat = C.rank_correlation(list(range(12)), [3.0] * 12)
    assert flat.spearman is None and flat.note == "undefined: the grades are all equal"


def test_correlation_table_crosses_every_metric_with_every_criterion_over_shared_samples() -> None:
    x, y = _rule(30, 3)
    samples = [({"rougeL": float(a), "bleu": float(a) * 50}, {"accuracy": float(b)}) for a, b in zip(x, y, strict=True)]
    samples += [({"rougeL": 0.5}, {}), ({}, {"accuracy": 3.0}), ({"rougeL": math.nan}, {"accuracy": 2.0})]
    t = C.correlation_table(samples, reps=200)
    assert t.samples == 31
    assert [(r.metric, r.criterion) for r in t.rows] == [("bleu", "accuracy"), ("rougeL", "accuracy")]
    assert t.get("rougeL", "accuracy").n == 30  # the empty and the NaN sample are left out of the cell
    assert t.get("bleu", "accuracy").spearman == pytest.approx(t.get("rougeL", "accuracy").spearman)


def test_quadratic_kappa_ci_uses_scikit_learn_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(1, 6, 50)
    b = np.clip(a + rng.choice([-1, 0, 0, 1], 50), 1, 5)
    k = C.quadratic_kappa_ci(list(a), list(b), labels=[1, 2, 3, 4, 5], reps=200)
    assert k.value == pytest.approx(cohen_kappa_score(a, b, labels=[1, 2, 3, 4, 5], weights="quadratic"))
    assert k.ci[0] < k.value < k.ci[1] and k.n == 50 and k.statistic == "quadratic_kappa"
    few = C.quadratic_kappa_ci([1, 2], [1, 2])
    assert few.value is None and few.note.startswith("not enough data")
    assert C.quadratic_kappa_ci([3] * 6, [3] * 6).value is None  # one grade value throughout: undefined


def test_alpha_ci_over_items_with_missing_grades() -> None:
    rng = np.random.default_rng(1)
    units = [[int(v), int(np.clip(v + rng.choice([-1, 0, 1]), 1, 5)), None] for v in rng.integers(1, 6, 40)]
    a = C.alpha_ci(units, reps=200)
    assert a.value == pytest.approx(C.krippendorff_alpha(units, "ordinal")) and a.ci[0] < a.value < a.ci[1]
    assert a.n == 40 and C.alpha_ci(units[:3]).value is None


def test_wilson_ci_matches_scipy() -> None:
    expected = binomtest(7, 9).proportion_ci(confidence_level=0.9, method="wilson")
    assert C.wilson_ci(7, 9, 0.9) == pytest.approx((expected.low, expected.high))
    assert C.wilson_ci(0, 0) is None and C.wilson_ci(5, 5)[1] == pytest.approx(1.0)
