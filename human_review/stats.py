"""Per-queue statistics for the admin page and API: progress, throughput, agreement (α and κ with CIs),
reviewer drift, gold, metric ↔ grade correlation, pairwise win rates (Wilson CIs, ties apart) and rankings."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np
from lorafleet.human_review import agreement, crud
from lorafleet.human_review.models import Grade, Item, Queue, User
from lorafleet.human_review.rubrics import Rubric
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet import correlation

MIN_SHARED = 5  # a reviewer pair's kappa is reported only over at least this many shared items
KAPPA_REPS = 200  # bootstrap draws per reviewer pair: scikit-learn's κ costs ~1 ms a call, pages stay quick
DRIFT_REPS = 1000


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


def queue_stats(session: Session, *, queue: Queue) -> dict[str, Any]:
    """Everything the admin page shows for one queue, as plain JSON-able data."""
    rows = session.execute(
        select(Grade, Item.ext_id, Item.public_id, Item.data, User.name)
        .join(Item, Item.id == Grade.item_id).join(User, User.id == Grade.reviewer_id)
        .where(Grade.queue_id == queue.id).order_by(Grade.id)).all()
    out: dict[str, Any] = {"queue": crud.queue_public(session, queue=queue).model_dump()}
    out["reviewers"] = _throughput(rows)
    if queue.mode == "rubric":
        rubric = Rubric.model_validate(queue.rubric)
        out["agreement"] = _agreement(rows, rubric)
        out["drift"] = _drift(rows, rubric)
        out["gold"] = _gold(rows, rubric)
        out["correlation"] = _correlation(rows, rubric)
        out["disagreements"] = _disagreements(rows, rubric)
    else:
        out["pairwise"] = _pairwise(rows)
    return out


def _throughput(rows) -> list[dict[str, Any]]:  # noqa: ANN001
    per: dict[str, list[float]] = defaultdict(list)
    for grade, *_rest, name in rows:
        per[name].append(grade.seconds or 0.0)
    return [{"reviewer": n, "grades": len(s), "median_seconds": _num(sorted(s)[len(s) // 2]) if s else None}
            for n, s in sorted(per.items())]


def _grades_by_item(rows, criterion: str) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """item → reviewer → level on one criterion (what agreement and drift both read)."""
    by_item: dict[str, dict[str, int]] = defaultdict(dict)
    for grade, ext_id, _pid, _data, name in rows:
        if criterion in grade.scores:
            by_item[ext_id][name] = grade.scores[criterion]
    return by_item


def _agreement(rows, rubric: Rubric) -> list[dict[str, Any]]:  # noqa: ANN001
    result = []
    for c in rubric.criteria:
        by_item = _grades_by_item(rows, c.name)
        reviewers = sorted({r for g in by_item.values() for r in g})
        units = [[g.get(r) for r in reviewers] for g in by_item.values() if len(g) >= 2]
        alpha = agreement.krippendorff_alpha(units, "ordinal")
        ci = agreement.bootstrap_ci(units, lambda u: agreement.krippendorff_alpha(u, "ordinal"))
        kappas, pairs = [], []
        for r1, r2 in itertools.combinations(reviewers, 2):
            shared = [(g[r1], g[r2]) for g in by_item.values() if r1 in g and r2 in g]
            if len(shared) >= MIN_SHARED:
                a, b = zip(*shared, strict=True)
                k = correlation.quadratic_kappa_ci(a, b, labels=c.levels, reps=KAPPA_REPS, min_items=MIN_SHARED)
                pairs.append({"a": r1, "b": r2, "n": k.n, "kappa": _num(k.value),
                              "ci": [_num(x) for x in k.ci] if k.ci else None, "note": k.note})
                if k.value is not None:
                    kappas.append(k.value)
        result.append({"criterion": c.name, "items": len(units), "alpha": _num(alpha),
                       "alpha_ci": [_num(x) for x in ci] if ci else None,
                       "kappa_mean": _num(sum(kappas) / len(kappas)) if kappas else None, "kappa_pairs": len(kappas),
                       "kappa": pairs})
    return result


def _drift(rows, rubric: Rubric) -> list[dict[str, Any]]:  # noqa: ANN001
    """Each reviewer's mean grade against the rest's, per criterion, with a 95% bootstrap CI of the gap.

    Paired where the queue has overlap (the reviewer's grade minus the others' mean on the same items,
    so item difficulty cancels); otherwise the two groups' means over their own items.
    """
    out = []
    for c in rubric.criteria:
        by_item = _grades_by_item(rows, c.name)
        reviewers = sorted({r for g in by_item.values() for r in g})
        if len(reviewers) < 2:
            continue
        for r in reviewers:
            mine = [g[r] for g in by_item.values() if r in g]
            rest = [v for g in by_item.values() for who, v in g.items() if who != r]
            gaps = [g[r] - sum(v for who, v in g.items() if who != r) / (len(g) - 1)
                    for g in by_item.values() if r in g and len(g) >= 2]
            paired = len(gaps) >= MIN_SHARED
            if paired:
                diff, ci = sum(gaps) / len(gaps), correlation.bootstrap_ci(
                    gaps, lambda u: sum(u) / len(u), reps=DRIFT_REPS)
            else:
                diff, ci = sum(mine) / len(mine) - sum(rest) / len(rest), _unpaired_ci(mine, rest)
            flag = None if ci is None else ("higher" if ci[0] > 0 else "lower" if ci[1] < 0 else None)
            out.append({"criterion": c.name, "reviewer": r, "n": len(mine), "others_n": len(rest),
                        "mean": _num(sum(mine) / len(mine)), "others_mean": _num(sum(rest) / len(rest)),
                        "diff": _num(diff), "ci": [_num(x) for x in ci] if ci else None,
                        "paired": paired, "shared_items": len(gaps), "flag": flag})
    return out


def _unpaired_ci(a: list[int], b: list[int], reps: int = DRIFT_REPS) -> tuple[float, float] | None:
    """Percentile CI of mean(a) − mean(b), each group resampled on its own; None below 3 per group."""
    if len(a) < 3 or len(b) < 3:
        return None
    rng = np.random.default_rng(0)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    draws = (xa[rng.integers(0, len(xa), (reps, len(xa)))].mean(1)
             - xb[rng.integers(0, len(xb), (reps, len(xb)))].mean(1))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def _correlation(rows, rubric: Rubric) -> dict[str, Any]:  # noqa: ANN001
    """Spearman/Kendall of each item's metric scores (item.scores) with its mean grade per criterion."""
    grades: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    metrics: dict[str, dict[str, float]] = {}
    for grade, ext_id, _pid, data, _name in rows:
        metrics[ext_id] = data.get("scores") or {}
        for crit, level in grade.scores.items():
            grades[ext_id][crit].append(level)
    samples = [(metrics[i], {c: sum(v) / len(v) for c, v in g.items()}) for i, g in grades.items() if metrics[i]]
    criteria = [c.name for c in rubric.criteria]
    table = correlation.correlation_table(samples)
    rows_out = sorted(table.rows, key=lambda r: (r.metric, criteria.index(r.criterion) if r.criterion in criteria
                                                 else len(criteria)))
    return {**table.model_dump(exclude={"rows"}), "items_with_scores": len(samples),
            "rows": [{**r.model_dump(), "enough": r.enough} for r in rows_out]}


def _gold(rows, rubric: Rubric) -> list[dict[str, Any]]:  # noqa: ANN001
    """Share of gold criteria each reviewer graded exactly as expected (metadata.gold)."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for grade, _ext, _pid, data, name in rows:
        gold = (data.get("metadata") or {}).get("gold")
        if not isinstance(gold, dict):
            continue
        for crit, expected in gold.items():
            if crit in grade.scores:
                hits[name][0] += int(grade.scores[crit] == expected)
                hits[name][1] += 1
    return [{"reviewer": n, "correct": h[0], "total": h[1], "accuracy": _num(h[0] / h[1])}
            for n, h in sorted(hits.items()) if h[1]]


def _disagreements(rows, rubric: Rubric) -> list[dict[str, Any]]:  # noqa: ANN001
    """Items where reviewers are ≥2 levels apart on some criterion: the adjudication list."""
    by_item: dict[str, dict[str, Any]] = {}
    for grade, ext_id, pid, _data, name in rows:
        entry = by_item.setdefault(ext_id, {"item": ext_id, "public_id": pid, "grades": {}})
        entry["grades"][name] = grade.scores
    out = []
    for entry in by_item.values():
        spread = {}
        for c in rubric.criteria:
            vals = [s[c.name] for s in entry["grades"].values() if c.name in s]
            if len(vals) >= 2 and max(vals) - min(vals) >= 2:
                spread[c.name] = max(vals) - min(vals)
        if spread:
            out.append({**entry, "spread": spread})
    return out[:200]


def _pairwise(rows) -> dict[str, Any]:  # noqa: ANN001
    comparisons = []
    tally: dict[str, dict[str, int]] = defaultdict(lambda: {"wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
    head: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"a_wins": 0, "b_wins": 0, "ties": 0,
                                                                      "both_bad": 0})
    for grade, _ext, _pid, data, _name in rows:
        a, b = sorted(data["responses"])
        if grade.choice in (a, b):
            winner, loser = (a, b) if grade.choice == a else (b, a)
            comparisons.append((winner, loser, 1.0))
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
            head[(a, b)]["a_wins" if grade.choice == a else "b_wins"] += 1
        elif grade.choice in ("tie", "both_bad"):
            comparisons.append((a, b, 0.5))
            for t in (a, b):
                tally[t]["ties" if grade.choice == "tie" else "both_bad"] += 1
            head[(a, b)]["ties" if grade.choice == "tie" else "both_bad"] += 1
    strengths = agreement.bradley_terry(comparisons) if comparisons else {}
    cis = agreement.bradley_terry_ci(comparisons) if len(comparisons) >= 5 else {}
    ranking = [{"target": t, "strength": _num(s), "ci": [_num(x) for x in cis[t]] if t in cis else None,
                **tally[t], **_win_rate(tally[t])}
               for t, s in sorted(strengths.items(), key=lambda kv: -kv[1])]
    h2h = [{"a": a, "b": b, **v, **_win_rate({"wins": v["a_wins"], "losses": v["b_wins"], "ties": v["ties"],
                                               "both_bad": v["both_bad"]})}
           for (a, b), v in sorted(head.items())]
    return {"comparisons": len(comparisons), "ranking": ranking, "head_to_head": h2h}


def _win_rate(t: dict[str, int]) -> dict[str, Any]:
    """Wins over decisive comparisons with a 95% Wilson CI; ties and both-bad are reported apart."""
    decisive, total = t["wins"] + t["losses"], t["wins"] + t["losses"] + t["ties"] + t["both_bad"]
    ci = correlation.wilson_ci(t["wins"], decisive)
    return {"decisive": decisive, "win_rate": _num(t["wins"] / decisive) if decisive else None,
            "win_rate_ci": [_num(x) for x in ci] if ci else None,
            "tie_rate": _num(t["ties"] / total) if total else None,
            "both_bad_rate": _num(t["both_bad"] / total) if total else None}
