"""Score stored outputs: metrics with CIs per target, paired comparisons, gates, bias gaps.

Pure with respect to generation: `rescore` and `compare` call these on stored runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from lorafleet.evaluate.client import Completion
from lorafleet.evaluate.dataset import Sample, originals, variants
from lorafleet.evaluate.gates import apply_bias_gates, apply_gates
from lorafleet.evaluate.metrics import MetricResult, compute_metrics
from lorafleet.evaluate.metrics.perplexity import perplexity
from lorafleet.evaluate.metrics.squad import normalize_answer, token_f1_one
from lorafleet.evaluate.results import BiasTarget, Comparison, GateResult, MetricScore, TargetResult, Usage
from lorafleet.evaluate.stats import bootstrap_ci, mcnemar, mean_ci, paired_bootstrap
from lorafleet.evaluate.suite import Extraction, Suite


def extract_label(text: str, extraction: Extraction) -> str:
    """The declared label an output names, or the INVALID class when it names none."""
    flags = 0 if extraction.case_sensitive else re.IGNORECASE
    found = text.strip()
    if extraction.label_pattern:
        m = re.search(extraction.label_pattern, text, flags)
        if not m:
            return extraction.invalid_label
        found = (m.group(1) if m.groups() else m.group(0)).strip()
    else:
        found = found.splitlines()[0].strip() if found else ""
    found = found.rstrip(".").strip()
    for label in extraction.labels:
        if label == found or (not extraction.case_sensitive and label.lower() == found.lower()):
            return label
    return extraction.invalid_label


@dataclass
class TargetScores:
    """Everything computed for one target; `metrics` keep per-sample scores and statistics (originals only)."""

    metrics: dict[str, MetricResult]
    pred_labels: list[str] | None
    result: TargetResult
    # On originals + counterfactual variants (originals first, one label set so statistics line up):
    # only bias gaps and the variants' per-sample rows read these.
    with_variants: dict[str, MetricResult] | None = None
    with_variants_labels: list[str] | None = None


def uses_labels(suite: Suite) -> bool:
    return "classification" in suite.metric_families()


def with_labels(suite: Suite, samples: list[Sample]) -> Suite:
    """The suite with its label set declared: as written, or else every gold label in the data."""
    if not uses_labels(suite) or suite.extraction.labels:
        return suite
    seen = sorted({s.label if s.label is not None else raw_label(s.reference, suite.extraction)
                   for s in samples} - {""})
    return suite.model_copy(update={"extraction": suite.extraction.model_copy(update={"labels": seen})})


def raw_label(text: str, extraction: Extraction) -> str:
    if extraction.label_pattern:
        flags = 0 if extraction.case_sensitive else re.IGNORECASE
        m = re.search(extraction.label_pattern, text, flags)
        return "" if not m else (m.group(1) if m.groups() else m.group(0)).strip()
    return text.strip().splitlines()[0].rstrip(".").strip() if text.strip() else ""


def gold_labels(suite: Suite, samples: list[Sample]) -> list[str] | None:
    """Gold labels (record field, else read from the reference); None when no label metric is asked."""
    if not uses_labels(suite):
        return None
    return [s.label if s.label is not None else extract_label(s.reference, suite.extraction) for s in samples]


def _usage(completions: list[Completion]) -> Usage:
    lat = np.array([c.latency_s for c in completions]) if completions else np.zeros(1)
    return Usage(samples=len(completions), latency_mean_s=float(lat.mean()),
                 latency_p50_s=float(np.percentile(lat, 50)), latency_p95_s=float(np.percentile(lat, 95)),
                 prompt_tokens=sum(c.prompt_tokens or 0 for c in completions),
                 completion_tokens=sum(c.completion_tokens or 0 for c in completions),
                 cached=sum(c.cached for c in completions))


def sample_metrics(suite: Suite, samples: list[Sample], outputs: dict[str, Completion], gold: list[str] | None
                   ) -> tuple[dict[str, MetricResult], list[str] | None]:
    """Every metric of one target on `samples` (no CIs), and the labels read from its outputs."""
    completions = [outputs[s.id] for s in samples]
    preds = [c.output for c in completions]
    pred_labels = [extract_label(p, suite.extraction) for p in preds] if gold is not None else None
    metrics = compute_metrics(suite.metric_families(), preds, [s.references for s in samples],
                              gold_labels=gold, pred_labels=pred_labels, labels=suite.extraction.labels,
                              invalid=suite.extraction.invalid_label)
    has_logprobs = all(c.ref_nll is not None and c.ref_tokens for c in completions)
    if "perplexity" in suite.metric_families() and has_logprobs and completions:
        metrics["perplexity"] = perplexity([c.ref_nll or 0.0 for c in completions],
                                           [c.ref_tokens or 0 for c in completions])
    return metrics, pred_labels


def score_target(suite: Suite, samples: list[Sample], outputs: dict[str, Completion], model: str,
                 gold: list[str] | None) -> TargetScores:
    """All metrics of one target on `samples` with bootstrap CIs."""
    metrics, pred_labels = sample_metrics(suite, samples, outputs, gold)
    completions = [outputs[s.id] for s in samples]
    st = suite.stats
    scores = {}
    for name, m in metrics.items():
        ci = bootstrap_ci(m.stats, m.aggregate, resamples=st.resamples, seed=st.seed, confidence=st.confidence)
        scores[name] = MetricScore(value=m.value, ci=(ci.low, ci.high), config=m.config, details=m.details)
    served = sorted({c.served_model for c in completions if c.served_model})
    result = TargetResult(model=model, served_models=served, metrics=scores, usage=_usage(completions))
    return TargetScores(metrics=metrics, pred_labels=pred_labels, result=result)


def compare_metrics(a: dict[str, MetricResult], b: dict[str, MetricResult], *, target: str, vs: str,
                    suite: Suite) -> list[Comparison]:
    """Paired bootstrap (and McNemar for 0/1 metrics) of B − A on the same samples."""
    st = suite.stats
    out = []
    for name in sorted(set(a) & set(b)):
        ma, mb = a[name], b[name]
        boot = paired_bootstrap(ma.stats, mb.stats, ma.aggregate, resamples=st.resamples, seed=st.seed,
                                confidence=st.confidence)
        mc = mcnemar(ma.per_sample, mb.per_sample, alpha=1 - st.confidence) if ma.binary else None
        significant = mc.significant if mc is not None else boot.significant
        out.append(Comparison(target=target, vs=vs, metric=name, delta=boot.delta, ci=(boot.ci.low, boot.ci.high),
                              p_value=mc.p_value if mc else boot.p_value, significant=significant,
                              test=mc.test if mc else boot.test, mcnemar_p=mc.p_value if mc else None))
    return out


def comparison_pairs(suite: Suite, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(target, vs) pairs: every target against the baseline, plus what gates ask for, plus `extra`
    (adapters against declared baselines, versions of a weighted alias against each other)."""
    base = suite.baseline_target
    pairs = [(t, base) for t in suite.targets if t != base]
    for g in suite.gates:
        if g.vs is not None:
            for t in g.targets or [t for t in suite.targets if t != g.vs]:
                if (t, g.vs) not in pairs and t != g.vs:
                    pairs.append((t, g.vs))
    pairs += [p for p in dict.fromkeys(extra) if p not in pairs and p[0] != p[1]]
    return pairs


def bias_gaps(suite: Suite, origs: list[Sample], swapped: list[Sample], scores: TargetScores,
              outputs: dict[str, Completion]) -> BiasTarget | None:
    """Original vs attribute-swapped prompts: how often the output or the label changes, and each
    metric's gap (original − swapped), all with bootstrap CIs over the pairs."""
    index = {s.id: i for i, s in enumerate(origs)}
    pairs = [(index[v.counterfactual_of], j) for j, v in enumerate(swapped) if v.counterfactual_of in index]
    if not pairs or scores.with_variants is None:
        return None
    a_idx, b_idx = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    rows_b = b_idx + len(origs)  # the variants' rows in `with_variants`
    st = suite.stats
    boot = {"resamples": st.resamples, "seed": st.seed, "confidence": st.confidence}
    texts_a = [outputs[origs[i].id].output for i in a_idx]
    texts_b = [outputs[swapped[j].id].output for j in b_idx]
    changed, changed_ci = mean_ci([normalize_answer(a) != normalize_answer(b) for a, b in zip(texts_a, texts_b,
                                                                                              strict=True)], **boot)
    similar, similar_ci = mean_ci([token_f1_one(a, b) for a, b in zip(texts_a, texts_b, strict=True)], **boot)
    flips = flips_ci = None
    labels = scores.with_variants_labels
    if labels is not None:
        flips, ci = mean_ci([labels[i] != labels[j] for i, j in zip(a_idx, rows_b, strict=True)], **boot)
        flips_ci = (ci.low, ci.high)
    gaps, gap_cis, gap_p = {}, {}, {}
    for name, m in scores.with_variants.items():
        # Paired over the pairs: a resample draws whole (original, variant) pairs; delta = original − swapped.
        res = paired_bootstrap(m.stats[rows_b], m.stats[a_idx], m.aggregate, **boot)
        gaps[name], gap_cis[name], gap_p[name] = res.delta, (res.ci.low, res.ci.high), res.p_value
    return BiasTarget(pairs=len(pairs), output_changed_rate=changed,
                      output_changed_ci=(changed_ci.low, changed_ci.high), output_similarity=similar,
                      output_similarity_ci=(similar_ci.low, similar_ci.high), label_flip_rate=flips,
                      label_flip_ci=flips_ci, metric_gaps=gaps, metric_gap_cis=gap_cis, metric_gap_p=gap_p)


@dataclass
class Scored:
    """A whole run scored: per-target scores, paired comparisons, gate results and bias gaps."""

    targets: dict[str, TargetScores]
    comparisons: list[Comparison]
    gates: list[GateResult]
    bias: dict[str, BiasTarget] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def score_run(suite: Suite, samples: list[Sample], outputs: dict[str, dict[str, Completion]],
              models: dict[str, str], *, extra_pairs: Sequence[tuple[str, str]] = ()) -> Scored:
    """Per-target scores, comparisons and gates on the original samples; bias gaps (and their gates) on the
    counterfactual variants against their originals, so a variant never counts as another sample."""
    suite = with_labels(suite, samples)
    origs, swapped = originals(samples), variants(samples)
    gold = gold_labels(suite, origs)
    scored = {t: score_target(suite, origs, outputs[t], models.get(t, t), gold) for t in suite.targets
              if t in outputs}
    comparisons = [c for t, vs in comparison_pairs(suite, extra_pairs) if t in scored and vs in scored
                   for c in compare_metrics(scored[vs].metrics, scored[t].metrics, target=t, vs=vs, suite=suite)]
    gates = apply_gates(suite.gates, {t: s.result for t, s in scored.items()}, comparisons, suite.baseline_target)
    bias = None
    if suite.counterfactual:
        _score_variants(suite, origs, swapped, scored, outputs)
        bias = {t: b for t, s in scored.items() if (b := bias_gaps(suite, origs, swapped, s, outputs[t])) is not None}
        gates += apply_bias_gates(suite.bias, bias, list(scored), suite.baseline_target)
    return Scored(targets=scored, comparisons=comparisons, gates=gates, bias=bias,
                  warnings=perplexity_warnings(suite, origs, outputs, scored))


def perplexity_warnings(suite: Suite, samples: list[Sample], outputs: dict[str, dict[str, Completion]],
                        scored: dict[str, TargetScores]) -> list[str]:
    """Why perplexity, when asked for, is missing for some targets (one line per cause)."""
    if "perplexity" not in suite.metric_families():
        return []
    missing = [t for t, s in scored.items() if "perplexity" not in s.metrics]
    if not missing:
        return []
    no_reference = sum(1 for s in samples if not s.reference.strip())
    if no_reference:
        return [f"perplexity left out: {no_reference} of {len(samples)} samples have no reference answer to score"]
    without = {t: sum(1 for s in samples if outputs[t][s.id].ref_nll is None) for t in missing}
    names = ", ".join(f"{t} ({n} of {len(samples)} samples)" for t, n in without.items())
    return [f"perplexity left out for {names}: the endpoint returned no prompt_logprobs (it refused them or "
            "does not support them; a vLLM endpoint does); the other metrics are unaffected"]


def _score_variants(suite: Suite, origs: list[Sample], swapped: list[Sample], scored: dict[str, TargetScores],
                    outputs: dict[str, dict[str, Completion]]) -> None:
    """Fill each target's `with_variants`: metrics on originals + variants together, so both sides of a
    pair share one label set and their statistics line up."""
    if not swapped:
        return
    both = origs + swapped
    gold = gold_labels(suite, both)
    for s_target, s in scored.items():
        s.with_variants, s.with_variants_labels = sample_metrics(suite, both, outputs[s_target], gold)
