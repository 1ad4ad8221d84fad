"""Gates: thresholds and significant deltas over a baseline decide the CI exit code."""

from __future__ import annotations

import operator

from lorafleet.evaluate.metrics.registry import LOWER_IS_BETTER
from lorafleet.evaluate.results import Comparison, GateResult, TargetResult
from lorafleet.evaluate.suite import Gate

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
