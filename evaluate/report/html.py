"""One self-contained HTML file: tables, inline-SVG bar charts with error bars, worst samples."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from lorafleet.evaluate.client import Completion
from lorafleet.evaluate.correlate import CorrelationReport, html_rows
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.judge_report import judge_lines
from lorafleet.evaluate.report.markdown import fmt
from lorafleet.evaluate.results import RunResults

BAR_W, CHART_H, PAD = 46, 140, 28
COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948"]


def _env() -> Environment:
    # Built per call (no import-time singleton); autoescape: model outputs are untrusted text.
    return Environment(loader=PackageLoader("lorafleet.evaluate.report", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def bar_chart(results: RunResults, metric: str) -> dict[str, Any]:
    """Geometry of one bar chart (value bars with CI whiskers) for the template to draw."""
    rows = [(n, t.metrics[metric]) for n, t in results.targets.items() if metric in t.metrics]
    top = max([max(s.ci[1], s.value) for _, s in rows] + [1e-9])
    scale = (CHART_H - PAD) / top
    bars = []
    for i, (name, s) in enumerate(rows):
        x = PAD + i * (BAR_W + 18)
        bars.append({"name": name, "x": x, "w": BAR_W, "y": CHART_H - s.value * scale, "h": s.value * scale,
                     "lo": CHART_H - s.ci[0] * scale, "hi": CHART_H - s.ci[1] * scale, "cx": x + BAR_W / 2,
                     "label": fmt(s.value), "colour": COLOURS[i % len(COLOURS)]})
    return {"metric": metric, "bars": bars, "width": PAD + len(rows) * (BAR_W + 18) + 10, "height": CHART_H + 34}


def worst_samples(samples: list[Sample], outputs: dict[str, dict[str, Completion]],
                  scores: list[dict[str, Any]], metric: str, per_target: int = 5) -> list[dict[str, Any]]:
    """For each target its lowest-scoring samples on `metric`, with every target's output beside."""
    by_id = {s.id: s for s in samples}
    blocks = []
    for target in outputs:
        rows = [r for r in scores if r["target"] == target and metric in r["scores"] and not r.get("counterfactual_of")]
        rows.sort(key=lambda r: r["scores"][metric])
        items = []
        for r in rows[:per_target]:
            s = by_id[r["id"]]
            items.append({"id": s.id, "score": fmt(r["scores"][metric]), "prompt": s.prompt_text(),
                          "reference": s.reference,
                          "outputs": [(t, outputs[t][s.id].output) for t in outputs if s.id in outputs[t]]})
        blocks.append({"target": target, "rows": items})
    return blocks


def render_html(results: RunResults, samples: list[Sample], outputs: dict[str, dict[str, Completion]],
                scores: list[dict[str, Any]], *, primary: str | None = None,
                correlation: CorrelationReport | None = None) -> str:
    metrics = sorted({m for t in results.targets.values() for m in t.metrics})
    primary = primary or (metrics[0] if metrics else "")
    comps = {(c.target, c.metric): c for c in results.comparisons if c.vs == results.baseline}
    return _env().get_template("report.html.j2").render(
        r=results, metrics=metrics, comps=comps, fmt=fmt, charts=[bar_chart(results, m) for m in metrics],
        worst=worst_samples(samples, outputs, scores, primary) if primary else [], primary=primary,
        correlation=correlation, correlation_rows=html_rows(correlation) if correlation else [],
        judge=judge_lines(results))
