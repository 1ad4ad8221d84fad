"""Per-queue statistics for the admin page and API: progress, throughput, agreement, gold, rankings."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

from lorafleet.human_review import agreement, crud
from lorafleet.human_review.models import Grade, Item, Queue, User
from lorafleet.human_review.rubrics import Rubric
from sqlalchemy import select
from sqlalchemy.orm import Session

MIN_SHARED = 5  # a reviewer pair's kappa is reported only over at least this many shared items


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
        out["gold"] = _gold(rows, rubric)
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


def _agreement(rows, rubric: Rubric) -> list[dict[str, Any]]:  # noqa: ANN001
    result = []
    for c in rubric.criteria:
        by_item: dict[str, dict[str, int]] = defaultdict(dict)
        for grade, ext_id, _pid, _data, name in rows:
            if c.name in grade.scores:
                by_item[ext_id][name] = grade.scores[c.name]
        reviewers = sorted({r for g in by_item.values() for r in g})
        units = [[g.get(r) for r in reviewers] for g in by_item.values() if len(g) >= 2]
        alpha = agreement.krippendorff_alpha(units, "ordinal")
        ci = agreement.bootstrap_ci(units, lambda u: agreement.krippendorff_alpha(u, "ordinal"))
        kappas = []
        for r1, r2 in itertools.combinations(reviewers, 2):
            shared = [(g[r1], g[r2]) for g in by_item.values() if r1 in g and r2 in g]
            if len(shared) >= MIN_SHARED:
                a, b = zip(*shared, strict=True)
                kappas.append(agreement.cohen_kappa_quadratic(a, b, c.levels))
        kappas = [k for k in kappas if not math.isnan(k)]
        result.append({"criterion": c.name, "items": len(units), "alpha": _num(alpha),
                       "alpha_ci": [_num(x) for x in ci] if ci else None,
                       "kappa_mean": _num(sum(kappas) / len(kappas)) if kappas else None, "kappa_pairs": len(kappas)})
    return result


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
    for grade, _ext, _pid, data, _name in rows:
        a, b = sorted(data["responses"])
        if grade.choice in (a, b):
            winner, loser = (a, b) if grade.choice == a else (b, a)
            comparisons.append((winner, loser, 1.0))
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
        elif grade.choice in ("tie", "both_bad"):
            comparisons.append((a, b, 0.5))
            for t in (a, b):
                tally[t]["ties" if grade.choice == "tie" else "both_bad"] += 1
    strengths = agreement.bradley_terry(comparisons) if comparisons else {}
    cis = agreement.bradley_terry_ci(comparisons) if len(comparisons) >= 5 else {}
    ranking = [{"target": t, "strength": _num(s), "ci": [_num(x) for x in cis[t]] if t in cis else None,
                **tally[t], "win_rate": _num(tally[t]["wins"] / max(1, sum(tally[t].values())))}
               for t, s in sorted(strengths.items(), key=lambda kv: -kv[1])]
    return {"comparisons": len(comparisons), "ranking": ranking}
