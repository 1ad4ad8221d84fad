"""Gates: thresholds and significant deltas over a baseline decide the CI exit code."""

from __future__ import annotations

import operator

from lorafleet.evaluate.metrics.registry import LOWER_IS_BETTER
from lorafleet.evaluate.results import BiasTarget, Comparison, GateResult, TargetResult
from lorafleet.evaluate.suite import GAP_SUFFIX, BiasLimit, Gate

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def gate_targets(gate: Gate, targets: list[str], baseline: str) -> list[str]:
    if gate.targets:
        return list(gate.targets)
    skip = gate.vs or baseline
    return [t for t in targets if t != skip] or list(targets)


def check_gate(gate: Gate, target: str, results: dict[str, TargetResult], comparisons: list[Comparison]
               ) -> GateResult:
    """One gate on one target; with `significant`, a threshold must hold for the CI's worse end."""
    score = results[target].metrics.get(gate.metric)
    if score is None:
        return GateResult(gate=gate.describe(), target=target, passed=False, detail="metric not computed")
    if gate.vs is None:
        assert gate.threshold is not None
        higher = gate.op in (">=", ">")
        value = (score.ci[0] if higher else score.ci[1]) if gate.significant else score.value
        passed = OPS[gate.op](value, gate.threshold)
        what = "CI bound" if gate.significant else "value"
        return GateResult(gate=gate.describe(), target=target, passed=bool(passed),
                          detail=f"{what} {value:.4f} {gate.op} {gate.threshold:g}")
    comp = next((c for c in comparisons if c.target == target and c.vs == gate.vs and c.metric == gate.metric), None)
    if comp is None:
        return GateResult(gate=gate.describe(), target=target, passed=False, detail=f"no comparison with {gate.vs}")
    need = gate.min_delta or 0.0
    # "Better" is down for lower-is-better metrics (perplexity): the gate reads the gain.
    gain = -comp.delta if gate.metric in LOWER_IS_BETTER else comp.delta
    passed = gain >= need and (not gate.significant or (comp.significant and gain > 0))
    return GateResult(gate=gate.describe(), target=target, passed=bool(passed),
                      detail=f"gain {gain:+.4f} (need >= {need:g}), p={comp.p_value:.4f}")


def apply_gates(gates: list[Gate], results: dict[str, TargetResult], comparisons: list[Comparison],
                baseline: str) -> list[GateResult]:
    return [check_gate(g, t, results, comparisons) for g in gates
            for t in gate_targets(g, list(results), baseline)]


def bias_figure(bias: BiasTarget, name: str) -> tuple[float, tuple[float, float] | None] | None:
    """(value, CI) of one counterfactual figure; a `<metric>_gap` is read as its absolute gap."""
    if name.endswith(GAP_SUFFIX):
        metric = name.removesuffix(GAP_SUFFIX)
        if metric not in bias.metric_gaps:
            return None
        lo, hi = bias.metric_gap_cis.get(metric, (bias.metric_gaps[metric],) * 2)
        # The gap's size is what a bound limits: the CI of |gap| runs from 0 (if it spans 0) to the far end.
        low = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
        return abs(bias.metric_gaps[metric]), (low, max(abs(lo), abs(hi)))
    value = getattr(bias, name, None)
    ci = {"label_flip_rate": bias.label_flip_ci, "output_changed_rate": bias.output_changed_ci,
          "output_similarity": bias.output_similarity_ci}.get(name)
    return None if value is None else (float(value), ci)


def check_bias_gate(name: str, limit: BiasLimit, target: str, bias: BiasTarget | None) -> GateResult:
    """One bias bound on one target; with `significant`, the CI's worse end must hold."""
    found = None if bias is None else bias_figure(bias, name)
    if found is None:
        detail = "no counterfactual pairs" if bias is None else f"{name} not computed"
        return GateResult(gate=limit.describe(name), target=target, passed=False, detail=detail)
    value, ci = found
    high = ci[1] if limit.significant and ci else value
    low = ci[0] if limit.significant and ci else value
    passed = (limit.max is None or high <= limit.max) and (limit.min is None or low >= limit.min)
    ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    what = "CI" if limit.significant else "value"
    return GateResult(gate=limit.describe(name), target=target, passed=bool(passed),
                      detail=f"{what}: {value:.4f}{ci_text} over {bias.pairs} pairs" if bias else "")


def apply_bias_gates(limits: dict[str, BiasLimit], bias: dict[str, BiasTarget], targets: list[str],
                     baseline: str) -> list[GateResult]:
    """Every bias bound on its targets (default: all but the baseline, or the only target)."""
    out = []
    for name, limit in limits.items():
        chosen = limit.targets or [t for t in targets if t != baseline] or list(targets)
        out += [check_bias_gate(name, limit, t, bias.get(t)) for t in chosen]
    return out
