"""A Markdown report short enough for a PR comment: targets × metrics with CIs and deltas, gates."""

from __future__ import annotations

from lorafleet.evaluate.baselines import target_notes, verdict_lines
from lorafleet.evaluate.correlate import CorrelationReport, markdown_lines
from lorafleet.evaluate.judge_report import judge_markdown
from lorafleet.evaluate.results import Comparison, RunResults


def fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(results: RunResults, target: str, metric: str, comps: dict[tuple[str, str], Comparison]) -> str:
    score = results.targets[target].metrics.get(metric)
    if score is None:
        return "–"
    text = f"{fmt(score.value)} [{fmt(score.ci[0])}, {fmt(score.ci[1])}]"
    if results.judge is not None and metric in results.judge.untrusted:
        text += " ⚠ untrusted"
    comp = comps.get((target, metric))
    if comp is not None:
        mark = "**" if comp.significant else ""
        text += f" ({mark}{comp.delta:+.3f}{'*' if comp.significant else ''}{mark})"
    return text


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _rate(value: float, ci: tuple[float, float] | None) -> str:
    return f"{value:.1%}" + ("" if ci is None else f" [{ci[0]:.1%}, {ci[1]:.1%}]")


def render_markdown(results: RunResults, *, correlation: CorrelationReport | None = None) -> str:
    """Targets × metrics with CIs; deltas vs the baseline (* = significant); gate results; metric ↔ grade
    correlation when the run has a correlation.json (`eval correlate`)."""
    metrics = sorted({m for t in results.targets.values() for m in t.metrics})
    comps = {(c.target, c.metric): c for c in results.comparisons if c.vs == results.baseline}
    verdict = "✅ all gates pass" if results.passed else "❌ a gate failed"
    lines = [f"### Eval `{results.suite}` — {verdict}", "",
             f"Run `{results.run_id}`, {results.samples} samples, {int(results.confidence * 100)}% bootstrap CIs "
             f"({results.resamples} resamples, seed {results.seed}); deltas vs `{results.baseline}`, "
             f"* = significant.", "",
             "| target | served | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name, target in results.targets.items():
        served = ", ".join(target.served_models) or target.model
        lines.append(f"| `{name}` | {served} | " + " | ".join(_cell(results, name, m, comps) for m in metrics) + " |")
    if notes := target_notes(results):
        lines += [""] + [f"- {n}" for n in notes]
    if verdicts := verdict_lines(results):
        level = int(results.confidence * 100)
        lines += ["", f"**Against the best baseline** (paired, adapter − baseline, {level}% CI):", ""]
        lines += [f"- {v.replace(' NOT ', ' **NOT** ')}" for v in verdicts]
    if results.gates:
        lines += ["", "| gate | target | result | detail |", "|---|---|---|---|"]
        for g in results.gates:
            lines.append(f"| {g.gate} | `{g.target}` | {'pass' if g.passed else '**FAIL**'} | {g.detail} |")
    other = [c for c in results.comparisons if c.vs != results.baseline]
    if other:
        lines += ["", "| comparison | metric | delta | p |", "|---|---|---|---|"]
        lines += [f"| `{c.target}` vs `{c.vs}` | {c.metric} | {c.delta:+.4f} | {c.p_value:.4f} |" for c in other]
    if results.bias:
        lines += ["", f"**Counterfactual gaps** (original vs swapped prompts, scored apart from the {results.samples} "
                  f"samples above; {int(results.confidence * 100)}% bootstrap CIs over the pairs)", "",
                  "| target | pairs | output changed | output similarity | label flips | gaps (original − swapped) |",
                  "|---|---|---|---|---|---|"]
        for name, b in results.bias.items():
            flips = "–" if b.label_flip_rate is None else _rate(b.label_flip_rate, b.label_flip_ci)
            gaps = "; ".join(f"{m} {g:+.3f}" + (f" [{b.metric_gap_cis[m][0]:+.3f}, {b.metric_gap_cis[m][1]:+.3f}]"
                                               if m in b.metric_gap_cis else "")
                             for m, g in b.metric_gaps.items()) or "–"
            lines.append(f"| `{name}` | {b.pairs} | {_rate(b.output_changed_rate, b.output_changed_ci)} | "
                         f"{fmt(b.output_similarity)}{_ci(b.output_similarity_ci)} | {flips} | {gaps} |")
    lines += judge_markdown(results.judge)
    if correlation is not None:
        lines += ["", *markdown_lines(correlation)]
    if results.warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in results.warnings]
    usage = ", ".join(f"`{n}` p50 {t.usage.latency_p50_s * 1000:.0f} ms, {t.usage.completion_tokens} tok"
                      for n, t in results.targets.items())
    lines += ["", f"Latency/tokens: {usage}."]
    return "\n".join(lines) + "\n"
