"""Read the PromQL that deploy/ ships with a real parser (promql-parser, Prometheus 2.45 grammar)
and compare it with the metrics the gateway registers."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import promql_parser as pp
import yaml
from prometheus_client import CollectorRegistry

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
COUNTER_SUFFIXES = ("_total", "_created")
RATE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "resets"}
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")


@dataclasses.dataclass(frozen=True)
class Series:
    """One exposed series name: its family's type and label names."""

    name: str
    kind: str
    labels: frozenset[str]


def exposed_series(registry: CollectorRegistry, metrics: object) -> dict[str, Series]:
    """Every sample name the registry exposes, from the metric objects `create_metrics` returned.

    Label names come from the metric objects (prometheus_client keeps them in `_labelnames`):
    a labelled metric with no children yet exposes no samples, so `collect()` alone cannot say.
    """
    out: dict[str, Series] = {}
    for field in dataclasses.fields(metrics):
        metric = getattr(metrics, field.name)
        labels = frozenset(metric._labelnames)
        for family in metric.describe():
            suffixes = {"counter": COUNTER_SUFFIXES, "histogram": HISTOGRAM_SUFFIXES}.get(family.type, ("",))
            for suffix in suffixes:
                extra = {"le"} if suffix == "_bucket" else set()
                out[family.name + suffix] = Series(family.name + suffix, family.type, labels | extra)
    assert set(out) >= {s.name for f in registry.collect() for s in f.samples}, "registry exposes unknown series"
    return out


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables with values PromQL accepts."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def parse(expr: str) -> pp.Expr:
    """Parse one query (Grafana variables substituted); raises ValueError on a syntax error."""
    return pp.parse(grafana_to_promql(expr))


def children(node: object) -> list[object]:
    if isinstance(node, pp.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pp.AggregateExpr):
        return [node.expr] + ([node.param] if isinstance(node.param, pp.Expr) else [])
    if isinstance(node, pp.UnaryExpr | pp.ParenExpr | pp.SubqueryExpr):
        return [node.expr]
    if isinstance(node, pp.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, pp.Call):
        return list(node.args)
    return []


def nodes(node: object) -> Iterator[object]:
    yield node
    for child in children(node):
        yield from nodes(child)


def selectors(node: object) -> list[pp.VectorSelector]:
    return [n for n in nodes(node) if isinstance(n, pp.VectorSelector)]


def matcher_labels(selector: pp.VectorSelector) -> set[str]:
    found = {m.name for m in selector.matchers.matchers}
    for group in selector.matchers.or_matchers:
        found |= {m.name for m in group}
    return found - {"__name__"}


def problems_of(where: str, expr: str, series: dict[str, Series], *, namespace: str = "lorafleet_") -> list[str]:
    """Every way one query disagrees with the exported series, one line each."""
    if found := LABEL_VALUES.match(expr):
        return _label_values_problems(where, found.group(1), found.group(2), series, namespace)
    try:
        tree = parse(expr)
    except ValueError as exc:
        return [f"{where}: not valid PromQL ({exc})"]
    problems: list[str] = []
    ours = [s for s in selectors(tree) if (s.name or "").startswith(namespace)]
    for sel in ours:
        if sel.name not in series:
            problems.append(f"{where}: {sel.name} is not exported by lorafleet.serve.metrics")
        elif missing := matcher_labels(sel) - series[sel.name].labels:
            problems.append(f"{where}: {sel.name} has no label(s) {sorted(missing)}")
    for node in nodes(tree):
        if isinstance(node, pp.AggregateExpr) and node.modifier is not None:
            inner = [series[s.name] for s in selectors(node.expr) if s.name in series]
            carried = set().union(*(s.labels for s in inner)) if inner else set()
            if inner and (missing := set(node.modifier.labels) - carried):
                problems.append(f"{where}: groups by {sorted(missing)}, which no series under it carries")
        if isinstance(node, pp.Call) and node.func.name in RATE_FUNCTIONS:
            for sel in selectors(node):
                if sel.name in series and series[sel.name].kind == "gauge":
                    problems.append(f"{where}: {node.func.name}() of the gauge {sel.name}")
        if (isinstance(node, pp.Call) and node.func.name == "histogram_quantile"
                and not any((s.name or "").endswith("_bucket") for s in selectors(node))):
            problems.append(f"{where}: histogram_quantile without a _bucket series")
    return problems


def _label_values_problems(where: str, selector: str | None, label: str, series: dict[str, Series],
                           namespace: str) -> list[str]:
    if selector is None:
        return []
    try:
        (sel,) = selectors(parse(selector))
    except ValueError as exc:
        return [f"{where}: not valid PromQL ({exc})"]
    if (sel.name or "").startswith(namespace):
        if sel.name not in series:
            return [f"{where}: {sel.name} is not exported by lorafleet.serve.metrics"]
        if label not in series[sel.name].labels:
            return [f"{where}: label_values of {sel.name} by missing label {label}"]
    return []


def series_names(expr: str, prefix: str) -> set[str]:
    if found := LABEL_VALUES.match(expr):
        expr = found.group(1) or "vector(0)"
    return {s.name for s in selectors(parse(expr)) if (s.name or "").startswith(prefix)}


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and templating query of a Grafana dashboard JSON."""
    dash = json.loads(path.read_text())
    found: list[tuple[str, str]] = []

    def walk_panels(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{path.name} panel {panel.get('title')!r}", target["expr"]))
            walk_panels(panel.get("panels", []))

    walk_panels(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and text:
            found.append((f"{path.name} variable {var['name']!r}", text))
    return found


def rule_queries(path: Path) -> list[tuple[str, str]]:
    """(where, expr) for every alerting/recording rule in a Prometheus rule file."""
    doc = yaml.safe_load(path.read_text())
    return [(f"{path.name} rule {rule.get('alert') or rule.get('record')!r}", rule["expr"])
            for group in doc["groups"] for rule in group["rules"]]
