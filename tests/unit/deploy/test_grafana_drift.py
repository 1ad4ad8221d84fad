"""The dashboard shows live drift and quality per adapter version, and the alerts watch each drift gauge."""

from __future__ import annotations

from tests.unit.deploy import promql
from tests.unit.deploy.paths import DASHBOARDS, PROMETHEUS

DRIFT_GAUGES = ("lorafleet_drift_input_far_share", "lorafleet_drift_input_length_distance",
                "lorafleet_drift_output_length_ratio", "lorafleet_output_invalid_rate", "lorafleet_eval_invalid_rate",
                "lorafleet_review_grade_mean", "lorafleet_drift_window_requests", "lorafleet_drift_dropped_total")


def test_dashboard_has_a_panel_per_drift_gauge_by_adapter_version() -> None:
    exprs = [e for d in DASHBOARDS for _, e in promql.dashboard_queries(d)]
    for gauge in DRIFT_GAUGES:
        uses = [e for e in exprs if gauge in e]
        assert uses, f"no panel shows {gauge}"
        if gauge != "lorafleet_drift_dropped_total":
            assert all("by (adapter, version" in e for e in uses), uses


def test_alerts_watch_every_drift_measure() -> None:
    exprs = "\n".join(e for _, e in promql.rule_queries(PROMETHEUS / "alerts.yml"))
    for gauge in DRIFT_GAUGES[:6]:
        assert gauge in exprs, f"no alert on {gauge}"
