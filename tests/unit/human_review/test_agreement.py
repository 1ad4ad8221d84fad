"""Agreement statistics against scikit-learn and Krippendorff's published examples."""

from __future__ import annotations

import math
import random

import pytest
from lorafleet.human_review.agreement import (
    bootstrap_ci,
    bradley_terry,
    bradley_terry_ci,
    cohen_kappa_quadratic,
    krippendorff_alpha,
)
from sklearn.metrics import cohen_kappa_score

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 observers x 12 units, missing data.
RELIABILITY = [[1, 1, N, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
               [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [N, 5, 5, 5], [N, N, 1, 1], [N, 3, N, N]]


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_matches_the_published_example(level: str, expected: float) -> None:
    assert round(krippendorff_alpha(RELIABILITY, level), 3) == expected


def test_krippendorff_alpha_two_coders_binary_example() -> None:
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert round(krippendorff_alpha(list(zip(a, b, strict=True)), "nominal"), 3) == 0.095


def test_krippendorff_alpha_edge_cases() -> None:
    assert krippendorff_alpha([[3, 3], [4, 4], [5, 5]], "ordinal") == 1.0
    assert math.isnan(krippendorff_alpha([[1, N], [N, 2]]))  # nothing pairable


@pytest.mark.parametrize("seed", range(5))
def test_quadratic_kappa_matches_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    a = [rng.randint(1, 5) for _ in range(60)]
    b = [min(5, max(1, x + rng.choice([-2, -1, 0, 0, 1]))) for x in a]
    expected = cohen_kappa_score(a, b, labels=[1, 2, 3, 4, 5], weights="quadratic")
    assert cohen_kappa_quadratic(a, b, [1, 2, 3, 4, 5]) == pytest.approx(expected, abs=1e-12)
    assert cohen_kappa_quadratic(a, b) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"), abs=1e-12)


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = random.Random(0)
    units = [[x, min(5, max(1, x + rng.choice([-1, 0, 1])))] for x in (rng.randint(1, 5) for _ in range(80))]
    est = krippendorff_alpha(units, "ordinal")
    lo, hi = bootstrap_ci(units, lambda u: krippendorff_alpha(u, "ordinal"))
    assert lo < est < hi
    assert bootstrap_ci(units[:2], lambda u: 0.0) is None


def test_bradley_terry_orders_targets_and_its_ci_covers_the_estimate() -> None:
    comps = ([("v2", "v1", 1.0)] * 30 + [("v2", "v1", 0.0)] * 10
             + [("v1", "base", 1.0)] * 25 + [("v1", "base", 0.0)] * 15)
    strengths = bradley_terry(comps)
    assert strengths["v2"] > strengths["v1"] > strengths["base"]
    assert sum(strengths.values()) == pytest.approx(1.0)
    # two targets: the MLE odds equal the (prior-smoothed) win ratio
    two = bradley_terry([("x", "y", 1.0)] * 8 + [("x", "y", 0.0)] * 2)
    assert two["x"] / two["y"] == pytest.approx(8.25 / 2.25, rel=1e-6)
    cis = bradley_terry_ci(comps, reps=100)
    for t, (lo, hi) in cis.items():
        assert lo <= strengths[t] <= hi


@pytest.mark.parametrize(("seed", "golden"), [(0, 0.7932618683001531), (1, 0.8313725490196078),
                                              (2, 0.7255813953488373)])
def test_quadratic_kappa_keeps_its_golden_values(seed: int, golden: float) -> None:
    """The values the hand-rolled κ gave before scikit-learn took over (b51dae6), fixed."""
    rng = random.Random(seed)
    a = [rng.randint(1, 5) for _ in range(60)]
    b = [min(5, max(1, x + rng.choice([-2, -1, 0, 0, 1]))) for x in a]
    assert cohen_kappa_quadratic(a, b, [1, 2, 3, 4, 5]) == pytest.approx(golden, abs=1e-12)


def test_repro_alpha_and_kappa_come_from_the_well_kept_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    import krippendorff
    import sklearn.metrics

    # the ratio level, which the hand-rolled version silently computed as ordinal (0.815)
    assert round(krippendorff_alpha(RELIABILITY, "ratio"), 4) == 0.7974
    calls = []
    real_alpha, real_kappa = krippendorff.alpha, sklearn.metrics.cohen_kappa_score
    monkeypatch.setattr(krippendorff, "alpha", lambda **kw: calls.append("alpha") or real_alpha(**kw))
    monkeypatch.setattr(sklearn.metrics, "cohen_kappa_score",
                        lambda *a, **kw: calls.append(kw.get("weights")) or real_kappa(*a, **kw))
    assert round(krippendorff_alpha(RELIABILITY, "ordinal"), 3) == 0.815
    cohen_kappa_quadratic([1, 2, 3, 4], [1, 2, 4, 4])
    assert calls == ["alpha", "quadratic"]
