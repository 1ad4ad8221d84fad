"""`card.review`: what human reviewers said about one adapter version, as the review app writes it.

The review app (human_review) recomputes it from its database a few seconds after grades arrive and
writes it under the registry lock; the promotion policy and the gateway's canary read it from the card.
Only items whose `adapter` is an exact version (`name@v3`) count. An empty dict: never reviewed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1


class CriterionSummary(BaseModel):
    """One rubric criterion's grades of this version: how many, their mean, and how far reviewers agree."""

    model_config = ConfigDict(extra="allow")

    n: int = Field(description="Grades given on this criterion.")
    items: int = Field(description="Items with at least one grade on it.")
    reviewers: int = 0
    scale: tuple[int, int] | None = Field(default=None, description="Lowest and highest level of the rubric.")
    mean: float | None = None
    mean_ci: tuple[float, float] | None = Field(
        default=None, description="95% bootstrap CI of the mean, resampling items (an item's grades together).")
    alpha: float | None = Field(default=None, description="Krippendorff's α (ordinal) over items with ≥2 grades.")
    alpha_ci: tuple[float, float] | None = None
    alpha_items: int = Field(default=0, description="Items with at least two grades (α's sample).")
    alpha_note: str | None = Field(default=None, description="Why α is missing, e.g. not enough data.")


class GradeSummary(BaseModel):
    """Counts and per-criterion summaries over one set of items (all, one queue, or captured ones)."""

    model_config = ConfigDict(extra="allow")

    items: int = 0
    graded_items: int = 0
    grades: int = 0
    reviewers: int = 0
    criteria: dict[str, CriterionSummary] = Field(default_factory=dict)


class QueueSummary(GradeSummary):
    mode: str = "rubric"
    rubric: str | None = None
    sources: dict[str, int] = Field(default_factory=dict, description="Items per source: eval, capture, import.")
    eval_runs: list[str] = Field(default_factory=list)


class PairwiseSummary(BaseModel):
    """This version's A/B comparisons in one pairwise queue (against whichever version answered the other side)."""

    model_config = ConfigDict(extra="allow")

    items: int = 0
    graded_items: int = 0
    comparisons: int = Field(default=0, description="Grades: wins + losses + ties + both_bad.")
    reviewers: int = 0
    opponents: list[str] = Field(default_factory=list, description="What answered the other side (served names).")
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0
    win_rate: float | None = Field(default=None, description="wins / (wins + losses); ties and both-bad apart.")
    win_rate_ci: tuple[float, float] | None = Field(default=None, description="95% Wilson interval.")
    tie_rate: float | None = None
    eval_runs: list[str] = Field(default_factory=list)


class CardReview(GradeSummary):
    """The whole of `card.review`: pooled over rubric queues (per criterion), captured samples apart, per queue."""

    schema_version: int = SCHEMA_VERSION
    adapter: str = Field(description="The exact version, name@vN.")
    updated_at: datetime = Field(description="When the review database was read for this summary.")
    capture: GradeSummary = Field(default_factory=GradeSummary, description="Live samples captured by the gateway.")
    queues: dict[str, QueueSummary] = Field(default_factory=dict, description="Rubric queues.")
    pairwise: dict[str, PairwiseSummary] = Field(default_factory=dict, description="Pairwise queues: win rates.")
    eval_runs: list[str] = Field(default_factory=list, description="Eval runs whose samples were reviewed.")
    pooling_note: str | None = Field(
        default=None, description="Set when a criterion has different scales in different queues: pooled "
                                  "over the queues of its most-graded scale only.")


def parse_review(review: dict[str, Any]) -> CardReview | None:
    """The card's review as a model; None when it was never written."""
    return CardReview.model_validate(review) if review else None


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: tuple[float, float] | None, digits: int = 2) -> str:
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def criterion_line(name: str, c: CriterionSummary) -> str:
    """`accuracy  n=76 (38 items)  mean 3.90 [3.61, 4.18] of 1–5  α 0.71 [0.55, 0.82] (30 items)`."""
    scale = f" of {c.scale[0]}–{c.scale[1]}" if c.scale else ""
    alpha = f"α {_num(c.alpha)}{_ci(c.alpha_ci)} ({c.alpha_items} items)" if c.alpha is not None else \
        f"α – ({c.alpha_note or 'no items with two grades'})"
    return f"{name}  n={c.n} ({c.items} items)  mean {_num(c.mean)}{_ci(c.mean_ci)}{scale}  {alpha}"


def review_lines(review: dict[str, Any]) -> list[str]:
    """Plain-text lines for the review section of `adapters show`: totals, each criterion (indented),
    captured samples, each queue."""
    try:
        parsed = parse_review(review)
    except ValidationError as exc:  # written by hand or by another tool: show it, never fail `show`
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "card.review"
        return [f"unreadable ({where}: {err['msg']}): {json.dumps(review, default=str)[:300]}"]
    if parsed is None:
        return ["none yet (no graded review items name this version)"]
    lines = [f"{parsed.grades} grades of {parsed.graded_items}/{parsed.items} items by "
             f"{parsed.reviewers} reviewer(s), updated {parsed.updated_at.isoformat(timespec='seconds')}"]
    lines += [f"  {criterion_line(name, c)}" for name, c in parsed.criteria.items()]
    if parsed.capture.items:
        cap = parsed.capture
        lines.append(f"  captured live samples: {cap.grades} grades of {cap.graded_items}/{cap.items} items")
        lines += [f"    {criterion_line(name, c)}" for name, c in cap.criteria.items()]
    for qname, q in parsed.queues.items():
        sources = ", ".join(f"{k} {v}" for k, v in sorted(q.sources.items()))
        runs = f"; eval runs {', '.join(q.eval_runs)}" if q.eval_runs else ""
        lines.append(f"  queue {qname} ({q.rubric or q.mode}): {q.grades} grades, {q.graded_items}/{q.items} items "
                     f"({sources}){runs}")
    for qname, p in parsed.pairwise.items():
        rate = f"win rate {_num(p.win_rate)}{_ci(p.win_rate_ci)}" if p.win_rate is not None else "no decisive grade"
        lines.append(f"  pairwise {qname} vs {', '.join(p.opponents) or '?'}: {rate} ({p.wins} won, {p.losses} lost, "
                     f"{p.ties} tie, {p.both_bad} both bad; {p.comparisons} grades)")
    if parsed.pooling_note:
        lines.append(f"  note: {parsed.pooling_note}")
    return lines
