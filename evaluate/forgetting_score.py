"""Forgetting scored: each adapter's agreement with the base's answers and perplexity on them, against the
base's own (its noise floor), as paired drops with CIs; and the non-inferiority gate on the drop."""

from __future__ import annotations

import math

from lorafleet.evaluate.results import (
    Agreement,
    Comparison,
    ForgettingResults,
    ForgettingTarget,
    GateResult,
    MetricScore,
    RunResults,
)
from lorafleet.evaluate.suite import BASE, FORGETTING_METRICS, ForgettingSpec

PERPLEXITY = "perplexity"


def _score(score: MetricScore | None) -> Agreement | None:
    return None if score is None else Agreement(value=score.value, ci=score.ci)


def _drop(comp: Comparison) -> Agreement:
    """Comparisons hold adapter − base; a drop is base − adapter, so its CI is the mirror image."""
    return Agreement(value=-comp.delta, ci=(-comp.ci[1], -comp.ci[0]))


def forgetting_targets(spec: ForgettingSpec, results: RunResults) -> list[str]:
    """The adapters checked: as the suite names them, else every target but base and the prompted baselines."""
    if spec.targets:
        return [t for t in spec.targets if t in results.targets]
    return [t for t, r in results.targets.items() if t != BASE and r.role != "baseline"]


def summarize(spec: ForgettingSpec, results: RunResults, references: dict) -> ForgettingResults:
    """The forgetting section of a run's results from its targets' metrics and paired comparisons."""
    base = results.targets[BASE]
    comps = {(c.target, c.metric): c for c in results.comparisons if c.vs == BASE}
    out = ForgettingResults(metric=spec.metric, max_drop=spec.max_drop, samples=results.samples,
                            references=references,
                            noise_floor={m: a for m in FORGETTING_METRICS if (a := _score(base.metrics.get(m)))},
                            base_perplexity=_score(base.metrics.get(PERPLEXITY)))
    for name in forgetting_targets(spec, results):
        target = results.targets[name]
        ppl, base_ppl = target.metrics.get(PERPLEXITY), base.metrics.get(PERPLEXITY)
        ppl_comp = comps.get((name, PERPLEXITY))
        entry = ForgettingTarget(
            agreement={m: a for m in FORGETTING_METRICS if (a := _score(target.metrics.get(m)))},
            drop={m: _drop(c) for m in FORGETTING_METRICS if (c := comps.get((name, m))) is not None},
            perplexity=_score(ppl),
            perplexity_ratio=ppl.value / base_ppl.value if ppl and base_ppl and base_ppl.value else None,
            perplexity_delta=None if ppl_comp is None else Agreement(value=ppl_comp.delta, ci=ppl_comp.ci),
            served=target.served_models)
        out.targets[name] = entry
    return out


def forgetting_gates(spec: ForgettingSpec, summary: ForgettingResults) -> list[GateResult]:
    """Non-inferiority: an adapter passes when the upper CI bound of its drop is under `max_drop`."""
    gates = []
    for name, entry in summary.targets.items():
        drop = entry.drop.get(spec.metric)
        if drop is None:
            gates.append(GateResult(gate=spec.describe(), target=name, passed=False,
                                    detail=f"{spec.metric} against the base's answers not computed"))
            entry.passed = False
            continue
        upper = drop.ci[1]
        passed = not math.isnan(upper) and upper < spec.max_drop
        entry.passed = passed
        gates.append(GateResult(gate=spec.describe(), target=name, passed=passed,
                                detail=f"drop {drop.value:+.4f} [{drop.ci[0]:+.4f}, {drop.ci[1]:+.4f}], upper bound "
                                       f"{'<' if passed else '>='} {spec.max_drop:g} over {summary.samples} prompts"))
    return gates


def forgetting_warnings(summary: ForgettingResults) -> list[str]:
    """What the forgetting check could not measure."""
    missing = [n for n, e in summary.targets.items() if e.perplexity is None]
    if summary.base_perplexity is None or missing:
        return ["forgetting: perplexity on the base's answers left out (the endpoint gave no prompt_logprobs); "
                "agreement (rougeL, exact_match) is measured"]
    return []


def forgetting_lines(summary: ForgettingResults) -> list[str]:
    """Plain lines for the CLI: the noise floor, then each adapter's agreement, drop and perplexity."""
    m = summary.metric
    floor = summary.noise_floor.get(m)
    ref = summary.references
    lines = [f"forgetting ({summary.samples} prompts; references: the base's answers, "
             f"{'reused' if ref.get('cached') else 'generated now'}): base now vs its own answers {m} "
             + (f"{floor.value:.3f} [{floor.ci[0]:.3f}, {floor.ci[1]:.3f}]" if floor else "–")]
    for name, e in summary.targets.items():
        a, d = e.agreement.get(m), e.drop.get(m)
        text = f"  {name}: {m} {a.value:.3f}" if a else f"  {name}: {m} –"
        if d:
            text += f", drop {d.value:+.3f} [{d.ci[0]:+.3f}, {d.ci[1]:+.3f}]"
        if (em := e.agreement.get("exact_match")) is not None:
            text += f", exact match {em.value:.3f}"
        if e.perplexity_ratio is not None:
            text += f", perplexity ×{e.perplexity_ratio:.2f} of the base's"
        if e.passed is not None:
            text += f" — {'pass' if e.passed else 'FAIL'} (max_drop {summary.max_drop:g})"
        lines.append(text)
    return lines


def card_entry(results: RunResults, target: str, run_path: str) -> dict | None:
    """What the adapter's card keeps of one forgetting run (None when the run did not check `target`)."""
    f = results.forgetting
    if f is None or target not in f.targets:
        return None
    e = f.targets[target]
    return {"suite": results.suite, "run_id": results.run_id, "path": run_path, "endpoint": results.endpoint,
            "measured_at": results.created_at, "samples": f.samples, "confidence": results.confidence,
            "resamples": results.resamples, "metric": f.metric, "max_drop": f.max_drop, "passed": e.passed,
            "served": e.served, "base_served": results.targets[BASE].served_models,
            "lorafleet_version": _version(),
            "agreement": {m: a.model_dump(mode="json") for m, a in e.agreement.items()},
            "drop": {m: a.model_dump(mode="json") for m, a in e.drop.items()},
            "noise_floor": {m: a.model_dump(mode="json") for m, a in f.noise_floor.items()},
            "perplexity": e.perplexity.model_dump(mode="json") if e.perplexity else None,
            "base_perplexity": f.base_perplexity.model_dump(mode="json") if f.base_perplexity else None,
            "perplexity_ratio": e.perplexity_ratio,
            "references": {k: f.references.get(k) for k in ("key", "base", "generated", "reused", "cached")},
            "warnings": [w for w in results.warnings if w.startswith("forgetting")]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorafleet")
    except PackageNotFoundError:
        return "unknown"


def card_lines(entry: dict) -> list[str]:
    """`adapters show`: the card's forgetting entry in a few plain lines."""
    if not entry:
        return ["forgetting: not measured (run `lorafleet eval run examples/forgetting/suite.yaml` with this "
                "adapter as a target)"]
    m = entry.get("metric", "rougeL")

    def fmt(a: dict | None, signed: bool = False) -> str:
        if not a:
            return "–"
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(a['value'])} [{f.format(a['ci'][0])}, {f.format(a['ci'][1])}]"

    verdict = {True: "pass", False: "FAIL", None: "no gate"}[entry.get("passed")]
    lines = [f"forgetting: {verdict} (max_drop {entry.get('max_drop')}) on {entry.get('samples')} general prompts, "
             f"{int(100 * entry.get('confidence', 0.95))}% CI, suite {entry.get('suite')}, run {entry.get('run_id')}"
             + (f", measured on {', '.join(entry['served'])}" if entry.get("served") else ""),
             f"  {m} vs the base's answers {fmt(entry['agreement'].get(m))}, drop {fmt(entry['drop'].get(m), True)}"
             f"; base's own (noise floor) {fmt(entry['noise_floor'].get(m))}",
             f"  exact match {fmt(entry['agreement'].get('exact_match'))}, drop "
             f"{fmt(entry['drop'].get('exact_match'), True)}"]
    if entry.get("perplexity") and entry.get("base_perplexity"):
        lines.append(f"  perplexity on the base's answers {fmt(entry['perplexity'])} vs the base's "
                     f"{fmt(entry['base_perplexity'])} (×{entry['perplexity_ratio']:.2f})")
    else:
        lines.append("  perplexity: not measured (the endpoint gave no prompt_logprobs)")
    return lines
