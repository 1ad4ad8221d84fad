"""The suite's `judge:` section: an OpenAI endpoint grading outputs on a review rubric (pointwise) or
picking the better of two targets' outputs (pairwise), trusted only as far as it agrees with reviewers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorafleet.errors import ConfigError
from lorafleet.rubrics import Rubric, load_rubric

JUDGE = "judge"  # the mean over criteria; each criterion is judge_<criterion>
PAIRWISE_METRIC = "judge_pairwise"  # a target's share of pairwise wins (ties and flipped verdicts count half)


def is_judge_metric(name: str) -> bool:
    """`judge`, `judge_<criterion>` and `judge_pairwise` come from the judge, not from a metric family."""
    return name == JUDGE or name.startswith(f"{JUDGE}_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrustedIf(_Strict):
    """Minimum agreement with human grades (on the same samples) for the judge's scores to count."""

    kappa: float | None = Field(default=None, ge=-1, le=1, description="Quadratic-weighted Cohen's kappa.")
    alpha: float | None = Field(default=None, ge=-1, le=1, description="Krippendorff's alpha (interval).")

    @model_validator(mode="after")
    def _something(self) -> TrustedIf:
        if self.kappa is None and self.alpha is None:
            raise ValueError("give kappa (or alpha), e.g. trusted_if: {kappa: 0.6}")
        return self


class JudgeSpec(_Strict):
    """Who judges (an endpoint and model), on which rubric, how, and when its scores are trusted."""

    rubric: str = Field(description="A review rubric YAML (relative to the suite), as `review queues create` takes.")
    model: str = Field(default="base", description="Sent as `model`; `base` is the endpoint's base model.")
    endpoint: str | None = Field(default=None, description="An outside OpenAI endpoint; default: the run's (the "
                                 "lorafleet gateway), with the run's key.")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="Name of the env var holding the endpoint's key (never the key).")
    mode: Literal["pointwise", "pairwise", "both"] = "pointwise"
    targets: list[str] | None = Field(default=None, description="Pointwise: targets judged (default: all).")
    pairwise: list[str] | None = Field(default=None, min_length=2, max_length=2,
                                       description="Pairwise: the two targets (default: review.pairwise, else the "
                                       "baseline and the first other target).")
    sample: int | None = Field(default=None, ge=1, description="Judge only this many samples (seeded, same for "
                               "every target; drawn as review.sample draws, so the same count and seed judge "
                               "exactly the reviewed samples); default: all.")
    seed: int = 0
    max_failure_rate: float = Field(default=0.2, ge=0, le=1, description="Above this share of unjudged samples, "
                                    "gates on judge metrics fail.")
    trusted_if: TrustedIf | None = None
    grades: str | None = Field(default=None, description="A grades export JSONL (relative to the suite) to "
                               "measure agreement with; `--grades` overrides it.")
    min_shared: int = Field(default=5, ge=2, description="Fewer shared samples than this: agreement is 'not "
                            "enough data'.")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema", description="Structured output asked for; an endpoint that refuses it (400/422) "
        "is asked again without, and the verdict parsed leniently.")
    temperature: float = Field(default=0.0, ge=0)
    max_tokens: int = Field(default=256, ge=8)
    retries: int = Field(default=2, ge=0, description="Retries of a failing judge request (then: unjudged).")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, value: Any) -> Any:
        if isinstance(value, dict) and "api_key" in value:
            raise ValueError("never put a key in the suite: name the env var that holds it, api_key_env: "
                             "JUDGE_API_KEY")
        return value

    @model_validator(mode="after")
    def _key_needs_endpoint(self) -> JudgeSpec:
        if self.api_key_env and not self.endpoint:
            raise ValueError("api_key_env is for an outside endpoint: add endpoint: (the gateway uses the run's key)")
        return self

    @property
    def pointwise(self) -> bool:
        return self.mode in ("pointwise", "both")

    @property
    def is_pairwise(self) -> bool:
        return self.mode in ("pairwise", "both")


def resolve_path(value: str, suite_path: Path | str | None) -> Path:
    """A path as the suite wrote it, relative to the suite's folder (or the working directory)."""
    p = Path(value)
    return p if p.is_absolute() or suite_path is None else Path(suite_path).parent / p


def judge_rubric(spec: JudgeSpec, suite_path: Path | str | None) -> Rubric:
    """The judge's rubric; a ConfigError names the file and the field."""
    return load_rubric(resolve_path(spec.rubric, suite_path))


def judge_metric_names(spec: JudgeSpec, rubric: Rubric) -> list[str]:
    """Every metric the judge can produce: judge, judge_<criterion> (pointwise), judge_pairwise."""
    names = [JUDGE, *(f"{JUDGE}_{c.name}" for c in rubric.criteria)] if spec.pointwise else []
    return names + ([PAIRWISE_METRIC] if spec.is_pairwise else [])


def check_judge(suite: Any, fail: Any, path: Path) -> None:
    """Cross-field rules of `judge:`: the rubric loads and has criteria, targets exist, gated judge
    metrics are ones the judge produces; gates on judge metrics need a judge."""
    spec: JudgeSpec | None = suite.judge
    judge_gates = [(i, g) for i, g in enumerate(suite.gates) if is_judge_metric(g.metric)]
    if spec is None:
        for i, g in judge_gates:
            fail(("gates", i), f"{g.metric!r} needs a judge", "add a judge: section (rubric:, model:)")
        return
    try:
        rubric = judge_rubric(spec, path)
    except ConfigError as exc:
        fail(("judge", "rubric"), exc.message, exc.hint or "see examples/rubrics/general.yaml")
    if spec.pointwise and not rubric.criteria:
        fail(("judge", "rubric"), f"rubric {rubric.name!r} has no criteria to grade",
             "use a rubric with criteria, or mode: pairwise")
    names = set(suite.targets) | {b.name for b in suite.baselines}
    for key in ("targets", "pairwise"):
        for t in getattr(spec, key) or []:
            if t not in names:
                fail(("judge", key), f"{t!r} is not a target", "name one of 'targets' (or a baseline)")
    if spec.is_pairwise and spec.pairwise is None and not suite.review.pairwise and len(names) < 2:
        fail(("judge", "mode"), "pairwise judging needs two targets", "add a target or use mode: pointwise")
    known = judge_metric_names(spec, rubric)
    for i, g in judge_gates:
        if g.metric not in known:
            fail(("gates", i), f"the judge does not produce {g.metric!r}", f"gate one of: {', '.join(known)}")
    if spec.grades is not None and not resolve_path(spec.grades, path).is_file():
        fail(("judge", "grades"), f"no such file {resolve_path(spec.grades, path)}",
             "export it with `lorafleet review export QUEUE --format grades`")
