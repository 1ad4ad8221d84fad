"""Read a version's evidence (card fields and the eval run folders they name) against a promotion policy.

Each rule becomes one or more Checks; nothing here writes. Run folders are read through their files
(manifest.json, samples.jsonl, scores.jsonl, results.json), never through the evaluate package.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from lorafleet.card import AdapterCard, latest_run
from lorafleet.errors import RegistryError
from lorafleet.promotion.decisions import Check
from lorafleet.promotion.policy import PairedGainRule, Policy, ReviewRule
from lorafleet.registry import AliasTarget, Registry, ResolvedAdapter


def gather(registry: Registry, candidate: ResolvedAdapter, current: AliasTarget | None,
           policy: Policy) -> tuple[list[Check], dict[str, Any]]:
    """Every check the policy asks for at this exact version, and the evidence ids they read."""
    card = candidate.card
    checks: list[Check] = []
    suites = latest_runs(card)
    checks += suite_checks(suites, policy)
    if policy.paired_gain is not None and policy.paired_gain.required:
        checks += paired_gain_checks(registry, candidate, current, suites, policy)
    if policy.fidelity:
        checks.append(fidelity_check(card.fidelity))
    if policy.forgetting:
        checks.append(forgetting_check(card.forgetting))
    if policy.review is not None:
        checks += review_checks(card.review, policy.review)
    if policy.no_probe_warning:
        checks.append(probe_check(card))
    evidence = {"eval_runs": sorted({e for c in checks for e in c.evidence if not e.startswith("review:")}),
                "review": _review_stats(card.review), "fidelity": card.fidelity.get("passed"),
                "forgetting": card.forgetting.get("run_id")}
    return checks, evidence


# ---- suites -------------------------------------------------------------------------------------

def latest_runs(card: AdapterCard) -> dict[str, dict[str, Any]]:
    """suite → the latest eval run entry on the card for it."""
    suites = {run.get("suite") for run in card.eval_runs if run.get("suite")}
    return {str(s): latest_run([r for r in card.eval_runs if r.get("suite") == s]) for s in suites}


def suite_checks(suites: dict[str, dict[str, Any]], policy: Policy) -> list[Check]:
    rule = policy.suites
    checks = []
    names = list(rule.required) or sorted(suites)
    for suite in names:
        run = suites.get(suite)
        if run is None:
            checks.append(Check(item=f"suite {suite}: gates", ok=False,
                                detail=f"no eval run of suite {suite} at this version "
                                       f"(run `lorafleet eval run` with it as a target)"))
            continue
        ok = bool(run.get("passed"))
        detail = "all gates passed" if ok else "gates failed: " + ("; ".join(failed_gates(run)) or "see the report")
        checks.append(Check(item=f"suite {suite}: gates", ok=ok, detail=f"{detail} (run {run['run_id']})",
                            evidence=[run["run_id"]]))
    if not rule.required and len(suites) < rule.min_suites:
        checks.append(Check(item="suites evaluated", ok=False,
                            detail=f"{len(suites)} suite(s) evaluated at this version, the policy needs "
                                   f"{rule.min_suites} (run `lorafleet eval run SUITE` with it as a target)"))
    return checks


def failed_gates(run: dict[str, Any]) -> list[str]:
    """The failed gates of a run's target, from its results.json (empty when it cannot be read)."""
    try:
        data = json.loads((Path(run["path"]) / "results.json").read_text(encoding="utf-8"))
    except (KeyError, OSError, ValueError):
        return []
    return [f"{g['gate']}: {g.get('detail', '')}".strip() for g in data.get("gates", [])
            if g.get("target") == run.get("target") and not g.get("passed")]


# ---- paired gain over the current version ---------------------------------------------------

def incumbent_of(current: AliasTarget | None, candidate: str) -> str | None:
    """The version the alias serves now (a weighted alias: its heaviest version other than the candidate)."""
    if current is None:
        return None
    if isinstance(current, str):
        return None if current == candidate else current
    others = [(w, v) for v, w in current.items() if v != candidate]
    return max(others)[1] if others else None


def paired_gain_checks(registry: Registry, candidate: ResolvedAdapter, current: AliasTarget | None,
                       suites: dict[str, dict[str, Any]], policy: Policy) -> list[Check]:
    rule = policy.paired_gain
    assert rule is not None
    incumbent = incumbent_of(current, candidate.version)
    if incumbent is None:
        return [Check(item="paired gain", ok=True, detail="no other version on the alias now: nothing to beat")]
    try:
        inc_card = registry.card(candidate.name, incumbent)
    except RegistryError as exc:
        return [Check(item=f"paired gain vs {incumbent}", ok=False, detail=f"cannot read its card: {exc}")]
    inc_runs = inc_card.eval_runs
    checks = []
    for suite in list(policy.suites.required) or sorted(suites):
        run = suites.get(suite)
        if run is None:
            continue  # the suite check already refuses
        checks.append(_gain_on_suite(suite, run, incumbent, [r for r in inc_runs if r.get("suite") == suite], rule))
    return checks


def _gain_on_suite(suite: str, run: dict[str, Any], incumbent: str, inc_runs: list[dict[str, Any]],
                   rule: PairedGainRule) -> Check:
    item = f"suite {suite}: paired gain vs {incumbent}"
    if not inc_runs:
        return Check(item=item, ok=False, detail=f"{incumbent} has no run of {suite} to pair with (eval run the "
                     f"suite with both versions as targets, e.g. NAME@{incumbent} and the new version)")
    # Prefer a run that scored both versions; else the incumbent's latest run of the same suite.
    same = [r for r in inc_runs if r.get("run_id") == run["run_id"]]
    other = same[0] if same else latest_run(inc_runs)
    try:
        metric = rule.metric or first_metric(Path(run["path"]))
        mine = item_scores(Path(run["path"]), run["target"], metric)
        theirs = item_scores(Path(other["path"]), other["target"], metric)
    except (KeyError, OSError, ValueError) as exc:
        return Check(item=item, ok=False, detail=f"cannot read the run folders' per-sample scores ({exc})",
                     evidence=[run["run_id"], other.get("run_id", "?")])
    shared = sorted(set(mine) & set(theirs))
    ids = sorted({run["run_id"], other["run_id"]})
    if len(shared) < rule.min_pairs:
        return Check(item=item, ok=False, detail=f"{len(shared)} samples shared by the two runs (same prompt and "
                     f"references), the policy needs {rule.min_pairs}", evidence=ids)
    diffs = [mine[k] - theirs[k] for k in shared]
    mean, lo, hi = bootstrap_mean_ci(diffs, rule.confidence, rule.resamples)
    ok = lo > rule.min_delta
    detail = (f"{metric} {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] at {rule.confidence:.0%} over {len(shared)} paired "
              f"samples; needs the lower bound > {rule.min_delta:g}")
    return Check(item=item, ok=ok, detail=detail, evidence=ids)


def first_metric(run_path: Path) -> str:
    """The metric a suite judges gains by: its first `vs` gate's, else its first gate's, else its first metric."""
    suite = json.loads((run_path / "manifest.json").read_text(encoding="utf-8"))["suite"]
    gates = [g for g in suite.get("gates") or [] if isinstance(g, dict) and g.get("metric")]  # resolved gates
    versus = [g for g in gates if g.get("vs")]
    if versus or gates:
        return str((versus or gates)[0]["metric"])
    first = (suite.get("metrics") or ["accuracy"])[0]
    name = first if isinstance(first, str) else next(iter(first))
    return "rougeL" if name == "rouge" else name


def item_scores(run_path: Path, target: str, metric: str) -> dict[str, float]:
    """sample key → the target's score; the key hashes the sample itself, so two runs pair only on equal samples."""
    keys: dict[str, str] = {}
    for line in (run_path / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            body = json.dumps({k: row.get(k) for k in ("messages", "prompt", "references", "label")}, sort_keys=True)
            keys[row["id"]] = hashlib.sha256(body.encode()).hexdigest()
    out: dict[str, float] = {}
    for line in (run_path / "scores.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("target") != target or row.get("counterfactual_of") or row.get("id") not in keys:
            continue
        value = row.get("scores", {}).get(metric)
        if isinstance(value, int | float):
            out[keys[row["id"]]] = float(value)
    if not out:
        raise ValueError(f"no {metric} scores for {target} in {run_path}")
    return out


def bootstrap_mean_ci(values: list[float], confidence: float, resamples: int, seed: int = 0) -> tuple[float, float,
                                                                                                    float]:
    """Mean and percentile bootstrap CI of paired differences (seeded, so a decision can be re-derived)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[int(tail * (resamples - 1))]
    hi = means[int((1 - tail) * (resamples - 1))]
    return sum(values) / n, lo, hi


# ---- card fields ---------------------------------------------------------------------------------

def fidelity_check(f: dict[str, Any]) -> Check:
    if not f:
        return Check(item="fidelity", ok=False, detail="not checked (registered before the check)")
    if f.get("skipped"):
        return Check(item="fidelity", ok=False, detail=f"skipped ({f['skipped']})")
    if f.get("passed"):
        return Check(item="fidelity", ok=True, detail=f"passed: token agreement {f.get('token_agreement')}, "
                     f"mean |Δ logprob| {f.get('mean_abs_logprob_diff')}")
    forced = " (registered with --force)" if f.get("forced") else ""
    return Check(item="fidelity", ok=False, detail=f"failed{forced}: token agreement {f.get('token_agreement')}, "
                 f"mean |Δ logprob| {f.get('mean_abs_logprob_diff')}")


def forgetting_check(f: dict[str, Any]) -> Check:
    ids = [f["run_id"]] if f.get("run_id") else []
    if not f:
        return Check(item="forgetting", ok=False, detail="not measured (eval run examples/forgetting/suite.yaml "
                     "with this version as a target)")
    if f.get("skipped"):
        return Check(item="forgetting", ok=False, detail=f"skipped ({f['skipped']})", evidence=ids)
    metric = f.get("metric", "rougeL")
    drop = (f.get("drop") or {}).get(metric) or {}
    ci = drop.get("ci")
    shown = f"drop of {metric} {drop.get('value', drop.get('mean'))}" + (f" CI {ci}" if ci else "")
    verdict = {True: "non-inferior", False: "FAILED non-inferiority"}.get(
        f.get("passed"), "no verdict (the run had no forgetting max_drop gate)")
    return Check(item="forgetting", ok=bool(f.get("passed")),
                 detail=f"{verdict}: {shown}, max_drop {f.get('max_drop')}, n={f.get('samples')}", evidence=ids)


def review_checks(review: dict[str, Any], rule: ReviewRule) -> list[Check]:
    criteria = review.get("criteria") or {}
    if not criteria:
        return [Check(item="review", ok=False, detail="no graded samples of this version (card.review is empty)")]
    checks = []
    for name in rule.criteria or sorted(criteria):
        c = criteria.get(name)
        item = f"review {name}"
        if c is None:
            checks.append(Check(item=item, ok=False, detail=f"no grades on {name!r}; graded: {', '.join(criteria)}"))
            continue
        problems, n, mean, alpha = [], c.get("n", 0), c.get("mean"), c.get("alpha")
        if n < rule.min_graded:
            problems.append(f"{n} grades < {rule.min_graded}")
        if rule.min_mean is not None and (mean is None or mean < rule.min_mean):
            problems.append(f"mean {mean} < {rule.min_mean}")
        if rule.min_alpha is not None and (alpha is None or alpha < rule.min_alpha):
            problems.append(f"agreement α {alpha} < {rule.min_alpha}" if alpha is not None else
                            f"agreement α not measured ({c.get('alpha_note') or 'fewer than two reviewers'})")
        detail = f"n={n}, mean {mean}, α {alpha}" + (": " + "; ".join(problems) if problems else "")
        checks.append(Check(item=item, ok=not problems, detail=detail,
                            evidence=[f"review:{q}" for q in sorted(review.get("queues") or {})]))
    return checks


def probe_check(card: AdapterCard) -> Check:
    warnings = card.metrics.get("probe_warnings") or []
    if not warnings:
        return Check(item="probe", ok=True, detail="no probe warning recorded")
    last = warnings[-1]
    return Check(item="probe", ok=False, detail=f"{len(warnings)} probe warning(s); last {last.get('at')} by "
                 f"{last.get('who')}: {last.get('detail')}")


def _review_stats(review: dict[str, Any]) -> dict[str, Any]:
    if not review:
        return {}
    return {"graded_items": review.get("graded_items"), "grades": review.get("grades"),
            "reviewers": review.get("reviewers"), "queues": sorted(review.get("queues") or {}),
            "criteria": {k: {f: v.get(f) for f in ("n", "mean", "alpha")}
                         for k, v in (review.get("criteria") or {}).items()}}
