"""Just enough PromQL reading to check queries against the metrics the gateway registers.

Not a PromQL parser: it finds the series our own namespaces name (`lorafleet_*`, `vllm:*`), their
label matchers, the labels of `by (…)` / `without (…)` clauses and the series passed straight to
rate-like functions. That covers every query shipped in deploy/.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

SERIES = re.compile(r"(?<![\w:])((?:lorafleet_|vllm:)[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
RATE_OF = re.compile(r"\b(?:rate|irate|increase|delta)\s*\(\s*((?:lorafleet_|vllm:)[A-Za-z0-9_:]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")
COUNTER_SUFFIXES = ("_total", "_created")


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


@dataclasses.dataclass
class Use:
    """Where a query names a series and which labels it relies on."""

    where: str
    expr: str
    series: str
    matchers: set[str]


def uses(where: str, expr: str) -> list[Use]:
    return [Use(where, expr, m.group(1), set(MATCHER.findall(m.group(2) or ""))) for m in SERIES.finditer(expr)]


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in GROUPING.findall(expr):
        labels |= {part.strip() for part in group.split(",") if part.strip()}
    return labels


def rated_series(expr: str) -> list[str]:
    return RATE_OF.findall(expr)


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
