"""Judge verdicts into numbers: per-sample metrics `judge_<criterion>`, `judge` and `judge_pairwise` with
bootstrap CIs, paired comparisons, the pairwise flip rate, agreement with human grades (quadratic κ and
Krippendorff's α with CIs) and gates that fail when the judge failed too often or is not trusted."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lorafleet.evaluate.gates import check_gate, gate_targets
from lorafleet.evaluate.judge import TIE, StoredJudge
from lorafleet.evaluate.judge_schema import (
    CriterionAgreement,
    JudgeAgreement,
    JudgeSummary,
    PairwiseSummary,
    Verdict,
)
from lorafleet.evaluate.judge_spec import JUDGE, PAIRWISE_METRIC, JudgeSpec, is_judge_metric
from lorafleet.evaluate.metrics import MetricResult
from lorafleet.evaluate.results import GateResult, MetricScore, RunResults
from lorafleet.evaluate.scoring import compare_metrics, comparison_pairs
from lorafleet.evaluate.stats import bootstrap_ci, mean_ci

from lorafleet.correlation import alpha_ci, quadratic_kappa_ci
from lorafleet.errors import ConfigError
from lorafleet.rubrics import Rubric

# ---- human grades --------------------------------------------------------------------------------------


@dataclass
class HumanGrades:
    """Grade rows of one run's items from a grades export: rubric scores per (target, sample), pairwise choices."""

    source: str
    note: str | None = None
    rows: int = 0
    other_runs: int = 0
    queues: set[str] = field(default_factory=set)
    scores: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)

    @property
    def graded_items(self) -> int:
        return sum(len(v) for v in self.scores.values()) + sum(len(v) for v in self.choices.values())


def _item_parts(row: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(run_id, target or 'pair', sample_id) of a grade row: its run_id/target/sample_id fields (or
    metadata), else its item id `run:target:sample` (`run:pair:sample` for A/B items)."""
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    parts = str(row.get("item") or "").split(":", 2)
    from_id = len(parts) == 3

    def pick(key: str, index: int) -> Any:
        return row.get(key) or meta.get(key) or (parts[index] if from_id else None)

    run_id, target, sample = pick("run_id", 0), pick("target", 1), pick("sample_id", 2)
    if from_id and parts[1] == "pair":
        target = "pair"
    return run_id, target, None if sample is None else str(sample)


def load_grades(path: Path, run_id: str, suite_name: str | None = None) -> HumanGrades:
    """This run's grade rows from a `review export --format grades` JSONL; a bad line is a file:line error.

    A new run (`eval run --grades`) has no grades yet: then the latest earlier run of the same suite whose
    items the file holds is used, matched by target and sample id (the same outputs, cache and temperature 0
    given), and `note` says so."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such grades file", hint="export it: lorafleet review export QUEUE --format "
                          "grades -o grades.jsonl")
    parsed: list[tuple[int, dict[str, Any], tuple[str | None, str | None, str | None]]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError(f"{path}:{n}: not a JSON line", hint="pass a grades export (review export "
                              "--format grades)") from None
        if not isinstance(row, dict) or "item" not in row:
            raise ConfigError(f"{path}:{n}: field 'item': missing", hint="pass a grades export (review export "
                              "--format grades), not a training or pairs export")
        parsed.append((n, row, _item_parts(row)))
    runs = {p[0] for _, _, p in parsed if p[0]}
    use, note = run_id, None
    if run_id not in runs and suite_name:
        earlier = sorted(r for r in runs if str(r).startswith(f"{suite_name}-"))
        if earlier:
            use = earlier[-1]
            note = f"grades of run {use}, matched by target and sample id"
    out = HumanGrades(source=str(path), note=note)
    for n, row, (run, target, sample) in parsed:
        out.rows += 1
        if run != use or target is None or sample is None:
            out.other_runs += 1
            continue
        if row.get("queue"):
            out.queues.add(str(row["queue"]))
        if target == "pair":
            if row.get("choice"):
                out.choices.setdefault(sample, []).append(str(row["choice"]))
        elif isinstance(row.get("scores"), dict) and row["scores"]:
            out.scores.setdefault((target, sample), []).append({**row["scores"], "_line": n})
    return out


def _scale_text(rubric: Rubric) -> str:
    return ", ".join(f"{c.name} {c.scale[0]}-{c.scale[1]}" for c in rubric.criteria)


def check_rubric_match(rubric: Rubric, rubric_source: str, grades: HumanGrades) -> None:
    """The grades' rubric must have the judge rubric's criteria on the same scales (exit 2, naming both)."""
    seen: dict[str, set[float]] = {}
    for rows in grades.scores.values():
        for row in rows:
            for k, v in row.items():
                if k != "_line" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, set()).add(float(v))
    if not seen:
        return
    names = {c.name for c in rubric.criteria}
    problems = [f"criteria only in the grades: {', '.join(sorted(set(seen) - names))}"] if set(seen) - names else []
    problems += [f"criteria never graded: {', '.join(sorted(names - set(seen)))}"] if names - set(seen) else []
    for c in rubric.criteria:
        off = sorted(v for v in seen.get(c.name, set()) if v not in c.levels)
        if off:
            problems.append(f"{c.name} graded {', '.join(f'{v:g}' for v in off)} outside {c.scale[0]}-{c.scale[1]}")
    if problems:
        queues = ", ".join(sorted(grades.queues)) or "?"
        review = ", ".join(f"{k} {min(v):g}..{max(v):g}" for k, v in sorted(seen.items()))
        raise ConfigError(
            f"judge rubric {rubric.name!r} ({rubric_source}: {_scale_text(rubric)}) does not match the review "
            f"rubric of queue {queues} in {grades.source} (grades seen: {review}): {'; '.join(problems)}",
            hint="give the judge the rubric the review queue grades with (judge.rubric)")


def _consensus(values: list[float]) -> int:
    """Reviewers' median, rounded half up: one human level per item to set against the judge's."""
    return int(math.floor(float(np.median(values)) + 0.5))


def pairwise_agreement(spec: JudgeSpec, verdicts: list[Verdict], pair: tuple[str, str] | None, grades: HumanGrades,
                       *, confidence: float, reps: int, seed: int) -> CriterionAgreement | None:
    """The judge's order-consistent verdict (a flip is a tie) vs the reviewers' median choice, coded
    a=0 < tie=1 < b=2: quadratic κ and interval α over the samples both decided."""
    if pair is None or not grades.choices:
        return None
    a, b = pair
    code = {a: 0, TIE: 1, "both_bad": 1, b: 2}
    judged = pair_verdicts(verdicts, pair)
    pairs = []
    for sid, (v1, v2) in sorted(judged.items()):
        human = [code[c] for c in grades.choices.get(sid, []) if c in code]
        if human:
            pairs.append((code[v1] if v1 == v2 else 1, _consensus([float(h) for h in human])))
    js, hs = [p[0] for p in pairs], [p[1] for p in pairs]
    kappa = quadratic_kappa_ci(js, hs, labels=[0, 1, 2], reps=reps, confidence=confidence, seed=seed,
                               min_items=spec.min_shared)
    alpha = alpha_ci([[float(j), float(h)] for j, h in pairs], level="interval", reps=reps, confidence=confidence,
                     seed=seed, min_items=spec.min_shared)
    return CriterionAgreement(criterion="pairwise", n=len(pairs), kappa=kappa, alpha=alpha)


def measure_agreement(spec: JudgeSpec, rubric: Rubric, verdicts: list[Verdict], grades: HumanGrades | None, *,
                      confidence: float, resamples: int, seed: int, pair: tuple[str, str] | None = None
                      ) -> JudgeAgreement:
    """Quadratic κ and interval α of judge vs reviewers' median, per criterion, with bootstrap CIs over items."""
    if grades is None:
        return JudgeAgreement(status="not measured", note="no human grades given (--grades FILE or judge.grades)")
    judged = {(v.target, v.id): v.scores for v in verdicts if v.kind == "pointwise" and v.scores}
    shared = sorted(k for k in judged if k in grades.scores)
    out = JudgeAgreement(status="measured", grades=grades.source, graded_items=grades.graded_items, shared=len(shared),
                         note=grades.note)
    if grades.graded_items == 0:
        out.status = "not measured"
        out.note = (f"{grades.source}: none of its {grades.rows} grade rows is of this run's items" if grades.rows
                    else f"{grades.source} holds no grades")
        return out
    reps = min(resamples, 1000)
    for c in rubric.criteria if spec.pointwise else []:
        pairs = [(judged[k][c.name], _consensus([r[c.name] for r in grades.scores[k] if c.name in r]))
                 for k in shared if c.name in judged[k] and any(c.name in r for r in grades.scores[k])]
        js, hs = [p[0] for p in pairs], [p[1] for p in pairs]
        kappa = quadratic_kappa_ci(js, hs, labels=c.levels, reps=reps, confidence=confidence, seed=seed,
                                   min_items=spec.min_shared)
        alpha = alpha_ci([[float(j), float(h)] for j, h in pairs], level="interval", reps=reps,
                         confidence=confidence, seed=seed, min_items=spec.min_shared)
        out.criteria.append(CriterionAgreement(criterion=c.name, n=len(pairs), kappa=kappa, alpha=alpha))
    if spec.is_pairwise:
        out.pairwise = pairwise_agreement(spec, verdicts, pair, grades, confidence=confidence, reps=reps, seed=seed)
        out.shared += out.pairwise.n if out.pairwise else 0
    decided = len(shared) if spec.pointwise else (out.pairwise.n if out.pairwise else 0)
    if decided < spec.min_shared:
        out.status = "not enough data"
        out.note = f"{decided} sample(s) both judged and graded, need {spec.min_shared}"
    elif grades.note:
        out.note = grades.note
    return out


def _trust(spec: JudgeSpec, agreement: JudgeAgreement) -> None:
    """Mark each criterion trusted or not by judge.trusted_if (the point estimate must reach it)."""
    if spec.trusted_if is None:
        return
    t = spec.trusted_if
    for row in [*agreement.criteria, *([agreement.pairwise] if agreement.pairwise else [])]:
        reasons = []
        for sym, want, got in (("κ", t.kappa, row.kappa), ("α", t.alpha, row.alpha)):
            if want is None:
                continue
            if got is None or got.value is None:
                why = (got.note if got else None) or (agreement.note if agreement.status != "measured" else None)
                reasons.append(f"{sym} {why or 'undefined'}")
            elif got.value < want:
                reasons.append(f"{sym} {got.value:.2f} < {want:g}")
        row.trusted = not reasons
        row.reason = f"judge untrusted: {'; '.join(reasons)} ({row.criterion})" if reasons else None


def untrusted_metrics(spec: JudgeSpec, rubric: Rubric, agreement: JudgeAgreement) -> dict[str, str]:
    """Judge metric → why gates on it fail as untrusted (empty without trusted_if)."""
    if spec.trusted_if is None:
        return {}
    out: dict[str, str] = {}
    if not spec.pointwise:
        pass
    elif agreement.status == "not measured" or not agreement.criteria:
        reason = f"judge untrusted: agreement with humans not measured ({agreement.note})"
        out = {f"{JUDGE}_{c.name}": reason for c in rubric.criteria} | {JUDGE: reason}
    else:
        for row in agreement.criteria:
            if not row.trusted:
                out[f"{JUDGE}_{row.criterion}"] = row.reason or "judge untrusted"
        if out:
            out[JUDGE] = next(iter(out.values()))
    if spec.is_pairwise:
        row = agreement.pairwise
        if row is None:
            out[PAIRWISE_METRIC] = ("judge untrusted: agreement with humans not measured (no reviewer A/B choices "
                                    "of this run's pairs)")
        elif not row.trusted:
            out[PAIRWISE_METRIC] = row.reason or "judge untrusted"
    return out


# ---- metrics ---------------------------------------------------------------------------------------------


@dataclass
class JudgeMetrics:
    per_target: dict[str, dict[str, MetricResult]] = field(default_factory=dict)
    ids: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # target → metric → sample ids, in order
    per_sample: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)


def _add(jm: JudgeMetrics, target: str, name: str, ids: list[str], values: list[float], config: dict[str, Any]
         ) -> None:
    if not ids:
        return
    jm.per_target.setdefault(target, {})[name] = MetricResult.from_mean(name, values, config)
    jm.ids.setdefault(target, {})[name] = ids
    for sid, v in zip(ids, values, strict=True):
        jm.per_sample.setdefault((target, sid), {})[name] = float(v)


def pair_verdicts(verdicts: list[Verdict], pair: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """sample id → (verdict with a shown first, verdict with b shown first), where both orders were judged."""
    a, _ = pair
    first: dict[str, str] = {}
    second: dict[str, str] = {}
    for v in verdicts:
        if v.kind == "pairwise" and v.judged and v.winner and v.shown:
            (first if v.shown[0] == a else second)[v.id] = v.winner
    return {sid: (first[sid], second[sid]) for sid in first if sid in second}


def judge_metrics(stored: StoredJudge, spec: JudgeSpec) -> tuple[JudgeMetrics, PairwiseSummary | None]:
    """Per target: judge_<criterion> and judge (mean over criteria) on its judged samples; judge_pairwise."""
    jm = JudgeMetrics()
    config = {"judge": stored.provenance.model, "rubric": stored.rubric.name,
              "prompt_hash": stored.provenance.prompt_hash[:16]}
    by_target: dict[str, list[Verdict]] = {}
    for v in stored.verdicts:
        if v.kind == "pointwise" and v.scores and v.target:
            by_target.setdefault(v.target, []).append(v)
    for target, vs in by_target.items():
        ids = [v.id for v in vs]
        for c in stored.rubric.criteria:
            _add(jm, target, f"{JUDGE}_{c.name}", ids, [float((v.scores or {})[c.name]) for v in vs],
                 {**config, "criterion": c.name, "scale": list(c.scale)})
        _add(jm, target, JUDGE, ids, [float(np.mean(list((v.scores or {}).values()))) for v in vs],
             {**config, "mean_of": [c.name for c in stored.rubric.criteria]})
    summary = None
    if spec.is_pairwise and stored.pair is not None:
        summary = _pairwise(jm, stored, config)
    return jm, summary


def _pairwise(jm: JudgeMetrics, stored: StoredJudge, config: dict[str, Any]) -> PairwiseSummary:
    a, b = stored.pair  # type: ignore[misc]
    both = pair_verdicts(stored.verdicts, (a, b))
    ids = sorted(both)
    wins_a = wins_b = ties = flips = 0
    score_b, flipped = [], []
    for sid in ids:
        v1, v2 = both[sid]
        if v1 != v2:
            flips += 1
            score_b.append(0.5)
        elif v1 == TIE:
            ties += 1
            score_b.append(0.5)
        else:
            wins_b += v1 == b
            wins_a += v1 == a
            score_b.append(1.0 if v1 == b else 0.0)
        flipped.append(float(v1 != v2))
    singles = [v for v in stored.verdicts if v.kind == "pairwise" and v.judged and v.winner and v.shown]
    first = [float(v.winner == v.shown[0]) for v in singles if v.winner != TIE and v.shown]
    rate, ci = mean_ci(flipped, resamples=1000, seed=0) if flipped else (None, None)
    cfg = {**config, "pair": [a, b], "orders": 2}
    _add(jm, b, PAIRWISE_METRIC, ids, score_b, {**cfg, "vs": a})
    _add(jm, a, PAIRWISE_METRIC, ids, [1.0 - s for s in score_b], {**cfg, "vs": b})
    return PairwiseSummary(a=a, b=b, pairs=len(ids), wins_a=wins_a, wins_b=wins_b, ties=ties, flips=flips,
                           flip_rate=rate, flip_rate_ci=None if ci is None else (ci.low, ci.high),
                           first_position_rate=float(np.mean(first)) if first else None)


def _subset(m: MetricResult, ids: list[str], keep: list[str]) -> MetricResult:
    index = {sid: i for i, sid in enumerate(ids)}
    return MetricResult.from_mean(m.name, [m.per_sample[index[s]] for s in keep], m.config)


# ---- into the results ------------------------------------------------------------------------------------


def failure_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in verdicts:
        if v.error:
            reason = v.error if v.error.startswith("judge endpoint") else v.error.split(" (")[0]
            out[reason[:160]] = out.get(reason[:160], 0) + 1
    return out


def apply_judge(results: RunResults, suite: Any, stored: StoredJudge, grades: HumanGrades | None,
                extra_pairs: Sequence[tuple[str, str]] = ()) -> JudgeMetrics:
    """Add judge metrics (with CIs), comparisons, the `judge` summary and judge gates to `results`."""
    spec: JudgeSpec = suite.judge
    st = suite.stats
    jm, pairwise = judge_metrics(stored, spec)
    for target, metrics in jm.per_target.items():
        if target not in results.targets:
            continue
        for name, m in metrics.items():
            ci = bootstrap_ci(m.stats, m.aggregate, resamples=st.resamples, seed=st.seed, confidence=st.confidence)
            n_all = sum(1 for v in stored.verdicts if v.kind == "pointwise" and v.target == target) \
                if name != PAIRWISE_METRIC else (pairwise.pairs if pairwise else 0)
            results.targets[target].metrics[name] = MetricScore(
                value=m.value, ci=(ci.low, ci.high), config=m.config,
                details={"judged": len(m.per_sample), "unjudged": max(0, n_all - len(m.per_sample))})
    for t, vs in comparison_pairs(suite, extra_pairs):
        if t not in jm.per_target or vs not in jm.per_target:
            continue
        for name in sorted(set(jm.per_target[t]) & set(jm.per_target[vs])):
            if name == PAIRWISE_METRIC:
                continue  # already a head-to-head figure
            ids_t, ids_v = jm.ids[t][name], jm.ids[vs][name]
            keep = [s for s in ids_t if s in set(ids_v)]
            if len(keep) < 2:
                continue
            a = {name: _subset(jm.per_target[vs][name], ids_v, keep)}
            b = {name: _subset(jm.per_target[t][name], ids_t, keep)}
            results.comparisons += compare_metrics(a, b, target=t, vs=vs, suite=suite)
    agreement = measure_agreement(spec, stored.rubric, stored.verdicts, grades, confidence=st.confidence,
                                  resamples=st.resamples, seed=st.seed, pair=stored.pair)
    _trust(spec, agreement)
    untrusted = untrusted_metrics(spec, stored.rubric, agreement)
    failed = [v for v in stored.verdicts if not v.judged]
    requests = len(stored.verdicts)
    rate = len(failed) / requests if requests else 0.0
    unjudged_by_target: dict[str, int] = {}
    for v in failed:
        for t in ([v.target] if v.target else list(v.shown or [])):
            unjudged_by_target[t] = unjudged_by_target.get(t, 0) + 1
    results.judge = JudgeSummary(
        mode=spec.mode, provenance=stored.provenance, samples=stored.samples, requests=requests,
        judged=requests - len(failed), unjudged=len(failed), failure_rate=rate,
        max_failure_rate=spec.max_failure_rate, failures=failure_counts(stored.verdicts),
        unjudged_by_target=unjudged_by_target, pairwise=pairwise, agreement=agreement,
        trusted_if=spec.trusted_if.model_dump(exclude_none=True) if spec.trusted_if else None, untrusted=untrusted)
    results.gates += judge_gates(suite, results, rate, len(failed), requests)
    results.passed = all(g.passed for g in results.gates)
    results.warnings += judge_warnings(results.judge)
    return jm


def judge_gates(suite: Any, results: RunResults, rate: float, failed: int, requests: int) -> list[GateResult]:
    """Gates on judge metrics: as any gate, but failing first for too many unjudged samples, then for trust."""
    spec: JudgeSpec = suite.judge
    summary = results.judge
    out = []
    for gate in (g for g in suite.gates if is_judge_metric(g.metric)):
        for target in gate_targets(gate, list(results.targets), suite.baseline_target):
            if target not in results.targets:
                continue
            res = check_gate(gate, target, results.targets, results.comparisons)
            if rate > spec.max_failure_rate:
                top = max(summary.failures.items(), key=lambda kv: kv[1])[0] if summary and summary.failures else ""
                res = res.model_copy(update={"passed": False, "detail": (
                    f"judge failed on {rate:.0%} of requests ({failed} of {requests} unjudged; max_failure_rate "
                    f"{spec.max_failure_rate:g}){f': {top}' if top else ''}")})
            elif summary is not None and gate.metric in summary.untrusted:
                res = res.model_copy(update={"passed": False,
                                             "detail": f"{summary.untrusted[gate.metric]}; {res.detail}"})
            out.append(res)
    return out


def judge_warnings(summary: JudgeSummary) -> list[str]:
    lines = []
    if summary.unjudged:
        why = "; ".join(f"{n}× {r}" for r, n in sorted(summary.failures.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"judge: {summary.unjudged} of {summary.requests} requests unjudged ({summary.failure_rate:.0%}, "
                     f"max {summary.max_failure_rate:g}): {why}")
    if summary.untrusted:
        lines.append(f"judge scores untrusted: {next(iter(summary.untrusted.values()))}")
    return lines


def judge_score_rows(rows: list[dict[str, Any]], jm: JudgeMetrics) -> None:
    """Put each judged sample's judge metrics into its scores.jsonl row."""
    for row in rows:
        if row.get("counterfactual_of"):
            continue
        extra = jm.per_sample.get((row["target"], row["id"]))
        if extra:
            row["scores"].update(extra)


# ---- the runner's steps ----------------------------------------------------------------------------------


def without_judge_gates(suite: Any) -> Any:
    """The suite for metric scoring: gates on judge metrics are applied after the judge (apply_judge)."""
    if not any(is_judge_metric(g.metric) for g in suite.gates):
        return suite
    return suite.model_copy(update={"gates": [g for g in suite.gates if not is_judge_metric(g.metric)]})


def judge_grades(suite: Any, suite_path: Path | str | None, grades_path: Path | None, run_id: str
                 ) -> HumanGrades | None:
    """The human grades the judge is compared with (`--grades`, else judge.grades), checked against the
    judge's rubric up front: a mismatch is exit 2 before anything is sent."""
    from lorafleet.evaluate.judge_spec import judge_rubric, resolve_path

    spec: JudgeSpec | None = suite.judge
    if spec is None:
        if grades_path is not None:
            raise ConfigError(f"--grades {grades_path}: the suite has no judge to compare with the grades",
                              hint="add a judge: section (rubric:, model:) or leave out --grades")
        return None
    path = grades_path or (resolve_path(spec.grades, suite_path) if spec.grades else None)
    if path is None:
        return None
    grades = load_grades(path, run_id, suite.name)
    if spec.pointwise:  # pairwise verdicts are compared with A/B choices, which have no rubric scale
        check_rubric_match(judge_rubric(spec, suite_path), str(resolve_path(spec.rubric, suite_path)), grades)
    return grades


def judge_into(results: RunResults, suite: Any, run_dir: Path, grades: HumanGrades | None,
               extra_pairs: Sequence[tuple[str, str]] = ()) -> JudgeMetrics | None:
    """Read the run's verdicts and apply them to `results` (None: no judge, or it never ran)."""
    from lorafleet.evaluate.judge import read_judgements

    if suite.judge is None:
        return None
    stored = read_judgements(run_dir)
    if stored is None:
        results.warnings.append("judge: no verdicts in the run folder (rescore with an endpoint to judge)")
        return None
    return apply_judge(results, suite, stored, grades, extra_pairs)
