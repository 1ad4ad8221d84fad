"""Metric ↔ human correlation for one run: join a review app grades export to the run's per-sample
scores, then Spearman/Kendall with bootstrap CIs per metric × rubric criterion (lorafleet.correlation).

A grade row belongs to the run when its review item id is `<run_id>:<target>:<sample_id>` (what
review_push creates) or when it carries run_id/target/sample_id fields (the grades export adds them).
Several reviewers' grades of one sample are averaged per criterion first.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorafleet.evaluate.store import RunStore
from pydantic import BaseModel, Field, ValidationError

from lorafleet.correlation import MIN_SHARED, CorrelationTable, correlation_table
from lorafleet.errors import ConfigError, FormatError
from lorafleet.fsutil import atomic_write_json

FILE = "correlation.json"


class GradeRow(BaseModel):
    """The fields of a `review export --format grades` row this join reads (others are ignored)."""

    item: str = Field(min_length=1)
    scores: dict[str, float] = Field(default_factory=dict)
    run_id: str | None = None
    target: str | None = None
    sample_id: str | None = None


class CorrelationReport(BaseModel):
    """correlation.json: which grades were joined to which samples, and the table."""

    run_id: str
    grades_file: str
    created_at: str
    grade_rows: int = Field(description="Rubric grade rows read from the file.")
    matched_rows: int = Field(description="Of those, rows that belong to this run's samples.")
    samples: int = Field(description="Distinct (target, sample) pairs with a grade and metric scores.")
    targets: list[str] = Field(default_factory=list)
    table: CorrelationTable


def read_grades(path: Path) -> list[GradeRow]:
    """Rubric grade rows of a grades export (pairwise rows, without scores, are skipped)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such grades file",
                          hint="export one: lorafleet review export QUEUE --format grades -o grades.jsonl")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise FormatError(f"not JSON ({exc.msg})", path=str(path), line=n,
                              hint="pass the file `lorafleet review export QUEUE --format grades` wrote") from None
        if not isinstance(raw, dict):
            raise FormatError("a grades row must be a JSON object", path=str(path), line=n)
        try:
            row = GradeRow.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise FormatError(err["msg"], path=str(path), line=n, field=".".join(map(str, err["loc"])),
                              hint="scores map each rubric criterion to a number") from None
        if row.scores:
            rows.append(row)
    return rows


def _key(row: GradeRow, run_id: str, targets: list[str]) -> tuple[str, str] | None:
    """(target, sample id) of a grade row in this run, else None."""
    if row.target is not None and row.sample_id is not None and row.run_id in (None, run_id):
        return row.target, row.sample_id
    prefix = f"{run_id}:"
    if row.run_id in (None, run_id) and row.item.startswith(prefix):
        rest = row.item[len(prefix):]
        for t in sorted(targets, key=len, reverse=True):  # longest first: a target name may contain ':'
            if rest.startswith(t + ":"):
                return t, rest[len(t) + 1:]
    return None


def correlate_run(run_dir: Path, grades_path: Path, *, min_shared: int = MIN_SHARED, reps: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> CorrelationReport:
    """Join the grades to the run's per-sample metric scores and correlate every metric × criterion."""
    store = RunStore(run_dir)
    run_id = store.manifest().run_id
    metric_scores: dict[tuple[str, str], dict[str, float]] = {}
    for r in store.scores():
        if r.get("counterfactual_of"):
            continue  # swapped prompts were never sent for review
        metric_scores[(r["target"], r["id"])] = {m: float(v) for m, v in (r.get("scores") or {}).items()
                                                 if isinstance(v, int | float) and math.isfinite(v)}
    targets = sorted({t for t, _ in metric_scores})
    rows = read_grades(grades_path)
    graded: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    matched = 0
    for row in rows:
        key = _key(row, run_id, targets)
        if key is None or key not in metric_scores:
            continue
        matched += 1
        for crit, level in row.scores.items():
            graded[key][crit].append(level)
    if not matched:
        raise ConfigError(f"{grades_path}: none of its {len(rows)} rubric grade row(s) belong to run {run_id}",
                          hint="export the grades of the queue this run pushed to (items named "
                               f"'{run_id}:<target>:<sample>'): lorafleet review export QUEUE --format grades")
    samples = [(metric_scores[k], {c: sum(v) / len(v) for c, v in g.items()}) for k, g in sorted(graded.items())]
    table = correlation_table(samples, min_shared=min_shared, reps=reps, confidence=confidence, seed=seed)
    return CorrelationReport(run_id=run_id, grades_file=str(grades_path), created_at=datetime.now(UTC).isoformat(),
                             grade_rows=len(rows), matched_rows=matched, samples=len(samples),
                             targets=sorted({t for t, _ in graded}), table=table)


def write_correlation(run_dir: Path, report: CorrelationReport) -> Path:
    """Write <run>/correlation.json atomically."""
    path = Path(run_dir) / FILE
    atomic_write_json(path, report.model_dump(mode="json"))
    return path


def load_correlation(run_dir: Path) -> CorrelationReport | None:
    """The run's correlation.json, or None when there is none (a damaged one is an error, not None)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        return CorrelationReport.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid ({exc.errors()[0]['msg']})",
                          hint="rewrite it: lorafleet eval correlate RUN --grades GRADES.jsonl") from None


def markdown_lines(report: CorrelationReport) -> list[str]:
    """The report's Markdown section: a metric × criterion table, 'not enough data' where n is short."""
    from lorafleet.correlation import format_cell

    t = report.table
    lines = [f"**Metric ↔ human grades** ({report.samples} graded samples of "
             f"{', '.join(f'`{x}`' for x in report.targets)}; Spearman ρ and Kendall τ with "
             f"{int(t.confidence * 100)}% bootstrap CIs; fewer than {t.min_shared} shared samples: not enough data)",
             "", "| metric | criterion | n | Spearman ρ | Kendall τ |", "|---|---|---|---|---|"]
    for r in t.rows:
        lines.append(f"| {r.metric} | {r.criterion} | {r.n} | {format_cell(r.spearman, r.spearman_ci, r.note)} | "
                     f"{format_cell(r.kendall, r.kendall_ci, r.note)} |")
    return lines


def html_rows(report: CorrelationReport) -> list[dict[str, Any]]:
    """Rows for the HTML report's correlation table."""
    from lorafleet.correlation import format_cell

    return [{"metric": r.metric, "criterion": r.criterion, "n": r.n, "enough": r.enough,
             "spearman": format_cell(r.spearman, r.spearman_ci, r.note),
             "kendall": format_cell(r.kendall, r.kendall_ci, r.note)} for r in report.table.rows]
