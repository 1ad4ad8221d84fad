"""Every series a Grafana panel or a Prometheus rule names is one the gateway really exports,
with the labels the query relies on; vLLM series exist in the installed vLLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.deploy import promql
from tests.unit.deploy.paths import DASHBOARDS, PROMETHEUS


def all_queries() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for dashboard in DASHBOARDS:
        found += promql.dashboard_queries(dashboard)
    for rules in sorted(PROMETHEUS.glob("*.yml")):
        if rules.name != "prometheus.yml":
            found += promql.rule_queries(rules)
    return found


@pytest.fixture(scope="module")
def gateway_series() -> dict[str, promql.Series]:
    from lorafleet.serve.metrics import create_metrics

    registry = CollectorRegistry()
    return promql.exposed_series(registry, create_metrics(registry))


def test_deploy_ships_queries() -> None:
    assert DASHBOARDS, "no Grafana dashboard in deploy/grafana/dashboards"
    queries = all_queries()
    assert len(queries) > 20
    assert any("rule" in where for where, _ in queries), "no Prometheus rule was read"


def problems_of(queries: list[tuple[str, str]], series: dict[str, promql.Series]) -> list[str]:
    return [line for where, expr in queries for line in promql.problems_of(where, expr, series)]


def test_every_query_names_exported_metrics_and_labels(gateway_series: dict[str, promql.Series]) -> None:
    assert problems_of(all_queries(), gateway_series) == []


def test_the_check_catches_wrong_names_labels_and_types(gateway_series: dict[str, promql.Series]) -> None:
    bad = [
        ("typo", 'sum(rate(lorafleet_request_total[5m]))'),
        ("label", 'sum(rate(lorafleet_requests_total{model="x"}[5m]))'),
        ("grouping", "sum by (tenant) (rate(lorafleet_prompt_tokens_total[5m]))"),
        ("gauge", "rate(lorafleet_hot_set_size[5m])"),
        ("quantile", "histogram_quantile(0.5, rate(lorafleet_request_duration_seconds_sum[5m]))"),
        ("values", "label_values(lorafleet_requests_total, tenant)"),
        ("syntax", "sum(rate(lorafleet_requests_total[5m])"),
        ("nested", "sum by (upstream) (rate(lorafleet_requests_total[5m]))"),
    ]
    problems = problems_of(bad, gateway_series)
    assert [p.split(":")[0] for p in problems] == [where for where, _ in bad]


def test_dashboard_covers_the_operator_questions() -> None:
    """Per-adapter request rate, latency p50/p95, TTFT, tokens/s, errors, hot set, adapter loads."""
    exprs = [expr for _, expr in all_queries() if "rule" not in _]
    joined = "\n".join(exprs)

    def any_expr(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert any_expr("by (adapter)", "rate(lorafleet_requests_total")
    assert any_expr("histogram_quantile(0.5", "lorafleet_request_duration_seconds_bucket")
    assert any_expr("histogram_quantile(0.95", "lorafleet_request_duration_seconds_bucket")
    assert any_expr("histogram_quantile(0.95", "lorafleet_time_to_first_token_seconds_bucket")
    assert any_expr("by (adapter)", "rate(lorafleet_completion_tokens_total")
    assert any_expr("lorafleet_requests_total", 'status=~"4..|5.."')
    assert "lorafleet_hot_set_size" in joined
    assert any_expr("rate(lorafleet_adapter_loads_total", "result")


def test_vllm_series_exist_in_installed_vllm() -> None:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed (the cpu or gpu extra brings it)")
    source = Path(spec.submodule_search_locations[0], "v1", "metrics", "loggers.py").read_text()
    names = set().union(*(promql.series_names(expr, "vllm:") for _, expr in all_queries()))
    assert names, "the dashboard shows no vLLM engine series"
    assert {n for n in names if f'"{n}"' not in source} == set()
