"""What a judge leaves behind: one verdict per request (judgements.jsonl) and the `judge` section of
results.json (provenance, failures, pairwise flips, agreement with reviewers, trust)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lorafleet.correlation import Agreement


class Verdict(BaseModel):
    """One judge request's outcome; `error` set means the sample is unjudged (and counted)."""

    kind: Literal["pointwise", "pairwise"]
    id: str = Field(description="The sample id.")
    target: str | None = Field(default=None, description="Pointwise: the target whose output was graded.")
    shown: list[str] | None = Field(default=None, description="Pairwise: the targets in the order shown (A, B).")
    scores: dict[str, int] | None = Field(default=None, description="Pointwise: criterion → level.")
    winner: str | None = Field(default=None, description="Pairwise: the winning target, or 'tie'.")
    error: str | None = Field(default=None, description="Why this sample is unjudged: endpoint down, not JSON …")
    raw: str | None = Field(default=None, description="The judge's reply (first 500 characters).")
    served_model: str | None = None
    fingerprint: str | None = Field(default=None, description="The endpoint's system_fingerprint, if any.")
    cached: bool = False
    prompt_hash: str

    @property
    def judged(self) -> bool:
        return self.error is None


class JudgeProvenance(BaseModel):
    """Who judged, as the endpoint reports it, and a hash of exactly what it was asked."""

    endpoint: str
    model: str = Field(description="The name sent as `model` (base resolved).")
    served_models: list[str] = Field(default_factory=list, description="`model` in the judge's answers.")
    identity: str = Field(default="", description="What answers for it per /v1/models (version, base weights).")
    fingerprints: list[str] = Field(default_factory=list, description="system_fingerprint values reported.")
    rubric: str
    rubric_sha256: str
    prompt_hash: str = Field(description="sha256 of the prompt templates, the rubric and the answer schema.")
    response_format: str = Field(description="json_schema | json_object | none; '(refused)' when the endpoint "
                                 "refused structured output and was asked without it.")
    temperature: float
    max_tokens: int


class PairwiseSummary(BaseModel):
    """Two targets compared on each sample twice, positions swapped; a verdict that changes with the
    order is a flip (position bias), counted as a tie."""

    a: str
    b: str
    pairs: int = Field(description="Samples judged in both orders.")
    wins_a: int
    wins_b: int
    ties: int = Field(description="Both orders said tie.")
    flips: int = Field(description="The two orders disagreed.")
    flip_rate: float | None
    flip_rate_ci: tuple[float, float] | None = None
    first_position_rate: float | None = Field(default=None, description="Share of single verdicts picking the "
                                              "response shown first (0.5: no position bias).")


class CriterionAgreement(BaseModel):
    """Judge vs reviewers on one criterion over the samples both graded (reviewers' median per item)."""

    criterion: str
    n: int
    kappa: Agreement | None = None
    alpha: Agreement | None = None
    trusted: bool | None = Field(default=None, description="None: no trusted_if in the suite.")
    reason: str | None = Field(default=None, description="Why it is untrusted.")


class JudgeAgreement(BaseModel):
    status: Literal["measured", "not measured", "not enough data"]
    note: str | None = None
    grades: str | None = Field(default=None, description="The grades file compared with.")
    graded_items: int = Field(default=0, description="Grade rows of this run's items in the file.")
    shared: int = Field(default=0, description="Samples with both a judge verdict and a human grade.")
    criteria: list[CriterionAgreement] = Field(default_factory=list)
    pairwise: CriterionAgreement | None = Field(default=None, description="Pairwise verdicts vs reviewers' A/B "
                                                "choices (a < tie < b; both bad counts as a tie).")


class JudgeSummary(BaseModel):
    """results.json `judge`: what was judged, what failed, agreement with humans, and trust."""

    mode: str
    provenance: JudgeProvenance
    samples: int = Field(description="Samples chosen for judging (judge.sample, else all).")
    requests: int = Field(description="Judge requests made (pointwise: one per target and sample; pairwise: two).")
    judged: int
    unjudged: int = Field(description="Requests whose verdict is missing: endpoint down, not JSON, off the scale.")
    failure_rate: float
    max_failure_rate: float
    failures: dict[str, int] = Field(default_factory=dict, description="Reason → unjudged count.")
    unjudged_by_target: dict[str, int] = Field(default_factory=dict)
    pairwise: PairwiseSummary | None = None
    agreement: JudgeAgreement
    trusted_if: dict[str, float] | None = None
    untrusted: dict[str, str] = Field(default_factory=dict, description="Judge metric → why its gates fail.")
