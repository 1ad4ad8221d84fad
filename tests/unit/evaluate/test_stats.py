"""Bootstrap CIs, paired bootstrap and McNemar."""

from __future__ import annotations

import numpy as np
import pytest
from lorafleet.evaluate.metrics import compute_metrics
from lorafleet.evaluate.metrics.base import mean_aggregate
from lorafleet.evaluate.stats import bootstrap_ci, bootstrap_values, mcnemar, paired_bootstrap
from scipy.stats import binomtest


def column(values) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(-1, 1)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    x = column(np.random.default_rng(0).random(300))
    a = bootstrap_ci(x, mean_aggregate, resamples=1000, seed=7)
    b = bootstrap_ci(x, mean_aggregate, resamples=1000, seed=7)
    c = bootstrap_ci(x, mean_aggregate, resamples=1000, seed=8)
    assert a == b
    assert a != c
    assert a.low < x.mean() < a.high
    # the standard error of a mean of U(0,1) over 300 samples is ~0.0167: a 95% CI is ~±0.033
    assert 0.04 < a.high - a.low < 0.09


def test_constant_scores_have_a_zero_width_interval() -> None:
    ci = bootstrap_ci(column([1.0] * 20), mean_aggregate, resamples=200, seed=0)
    assert ci.low == ci.high == 1.0


def test_bootstrap_recomputes_corpus_bleu_not_a_mean() -> None:
    preds = ["the cat sat on the mat", "a dog ran", "hello there world", "completely wrong"]
    refs = [["the cat sat on the mat"], ["the dog ran away"], ["hello world"], ["right answer here"]]
    bleu = compute_metrics({"bleu": {}}, preds, refs)["bleu"]
    values = bootstrap_values(bleu.stats, bleu.aggregate, resamples=50, seed=0)
    assert values.shape == (50,)
    assert np.all((values >= 0) & (values <= 100))
    assert values.std() > 0


def test_paired_bootstrap_finds_a_clear_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(200)
    better = paired_bootstrap(column(a), column(a + 0.05), mean_aggregate, resamples=500, seed=0)
    assert better.delta == pytest.approx(0.05)
    assert better.significant and better.p_value < 0.01
    same = paired_bootstrap(column(a), column(a), mean_aggregate, resamples=500, seed=0)
    assert same.delta == 0.0 and not same.significant and same.p_value == 1.0
    noisy = paired_bootstrap(column(a), column(rng.permutation(a)), mean_aggregate, resamples=500, seed=0)
    assert not noisy.significant


def test_paired_bootstrap_refuses_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(column([1, 2]), column([1, 2, 3]), mean_aggregate)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs() -> None:
    a = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1])
    b = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1])
    result = mcnemar(a, b)
    only_a, only_b = 1, 7
    assert result.p_value == pytest.approx(binomtest(only_b, only_a + only_b, 0.5).pvalue)
    assert result.delta == pytest.approx(b.mean() - a.mean())
    assert mcnemar(a, a).p_value == 1.0
    assert mcnemar(np.zeros(10), np.ones(10)).significant
