"""The stable JSON schema of a scored run (results.json); reports render from it."""

from __future__ import annotations

from typing import Any

from lorafleet.evaluate.judge_schema import JudgeSummary
from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class MetricScore(BaseModel):
    value: float
    ci: tuple[float, float]
    config: dict[str, Any]
    details: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    samples: int
    latency_mean_s: float
    latency_p50_s: float
    latency_p95_s: float
    prompt_tokens: int
    completion_tokens: int
    cached: int


class TargetResult(BaseModel):
    model: str = Field(description="The name sent as `model` (base resolved to the endpoint's name).")
    served_models: list[str] = Field(default_factory=list, description="Exact versions the endpoint reported.")
    metrics: dict[str, MetricScore]
    usage: Usage
    role: str | None = Field(default=None, description="base | adapter | baseline (a prompted base).")
    alias_of: str | None = Field(default=None, description="The weighted alias this version was evaluated for.")
    weight: float | None = Field(default=None, description="Its share of that alias's traffic.")
    baseline: str | None = Field(default=None, description="How this baseline prompts the base (k-shot, constrained).")


class Comparison(BaseModel):
    target: str
    vs: str
    metric: str
    delta: float
    ci: tuple[float, float]
    p_value: float
    significant: bool
    test: str
    mcnemar_p: float | None = None


class GateResult(BaseModel):
    gate: str
    target: str
    passed: bool
    detail: str


class BiasTarget(BaseModel):
    """Original vs attribute-swapped prompts of one target; every CI is a bootstrap over the pairs."""

    pairs: int
    output_changed_rate: float
    output_changed_ci: tuple[float, float] | None = None
    output_similarity: float = Field(description="Mean token F1 between original and swapped outputs.")
    output_similarity_ci: tuple[float, float] | None = None
    label_flip_rate: float | None = None
    label_flip_ci: tuple[float, float] | None = None
    metric_gaps: dict[str, float] = Field(
        default_factory=dict, description="original − swapped, per metric, each side computed as the metric is "
        "(corpus F1 for label_f1; `accuracy` is the share of labels matching gold).")
    metric_gap_cis: dict[str, tuple[float, float]] = Field(default_factory=dict,
                                                           description="Paired bootstrap CI of each gap.")
    metric_gap_p: dict[str, float] = Field(default_factory=dict, description="Paired bootstrap p of each gap.")


class VersusBest(BaseModel):
    """One adapter against the best baseline on one metric (a paired comparison, adapter − baseline)."""

    target: str
    delta: float
    ci: tuple[float, float]
    p_value: float
    significant: bool
    beats: bool = Field(description="Significantly better than the best baseline.")


class BestBaseline(BaseModel):
    """The highest-scoring of the base and the declared baselines on one metric (lowest for perplexity)."""

    baseline: str
    value: float
    candidates: dict[str, float] = Field(description="Every baseline's score on this metric.")
    adapters: list[VersusBest] = Field(default_factory=list)


class Agreement(BaseModel):
    """One target's agreement with the base's reference answers, or its perplexity on them."""

    value: float
    ci: tuple[float, float]


class ForgettingTarget(BaseModel):
    """One adapter against the base on the base's own answers; every drop is base − adapter, paired."""

    agreement: dict[str, Agreement] = Field(description="rougeL and exact_match against the base's answers.")
    drop: dict[str, Agreement] = Field(description="Base's agreement now − the adapter's: paired bootstrap CI.")
    perplexity: Agreement | None = Field(default=None, description="On the base's answers (None: no logprobs).")
    perplexity_ratio: float | None = Field(default=None, description="Adapter's perplexity / the base's.")
    perplexity_delta: Agreement | None = Field(default=None, description="Adapter − base perplexity, paired CI.")
    passed: bool | None = Field(default=None, description="The max_drop gate (None: no gate asked for).")
    served: list[str] = Field(default_factory=list, description="The exact versions that answered.")


class ForgettingResults(BaseModel):
    """The off-domain check: the base's reference answers, its noise floor and each adapter's drop."""

    metric: str = Field(description="The agreement metric the margin applies to.")
    max_drop: float
    samples: int
    references: dict[str, Any] = Field(description="Where the base's answers came from: key, base identity, "
                                       "generated_at, cached (reused from an earlier run).")
    noise_floor: dict[str, Agreement] = Field(
        description="The base now against its own earlier answers (1 − agreement: decoding noise, e.g. bf16 "
                    "greedy text changing with the batch).")
    base_perplexity: Agreement | None = None
    targets: dict[str, ForgettingTarget] = Field(default_factory=dict)


class RunResults(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    suite: str
    created_at: str
    endpoint: str
    baseline: str
    samples: int = Field(description="Original samples scored (counterfactual variants are counted in `bias`).")
    confidence: float
    resamples: int
    seed: int
    targets: dict[str, TargetResult]
    comparisons: list[Comparison] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    passed: bool = True
    bias: dict[str, BiasTarget] | None = None
    best_baseline: dict[str, BestBaseline] = Field(
        default_factory=dict, description="Per primary metric: the best baseline and each adapter against it.")
    warnings: list[str] = Field(default_factory=list, description="What was left out of the run, and why.")
    judge: JudgeSummary | None = Field(default=None, description="The LLM judge: provenance, unjudged counts, "
                                       "pairwise flips, agreement with human grades, trust.")
    forgetting: ForgettingResults | None = Field(default=None, description="The off-domain forgetting check.")
