"""Metric names are a contract with the Grafana dashboard; labels stay bounded."""

from __future__ import annotations

from lorafleet.serve.metrics import create_metrics
from prometheus_client import CollectorRegistry

from tests.unit.serve.conftest import BASE, Harness

EXPECTED = {
    "lorafleet_requests_total": ("counter", {"adapter", "version", "endpoint", "status"}),
    "lorafleet_request_duration_seconds": ("histogram", {"adapter", "version", "endpoint"}),
    "lorafleet_time_to_first_token_seconds": ("histogram", {"adapter", "version"}),
    "lorafleet_prompt_tokens_total": ("counter", {"adapter", "version"}),
    "lorafleet_completion_tokens_total": ("counter", {"adapter", "version"}),
    "lorafleet_requests_in_flight": ("gauge", {"adapter"}),
    "lorafleet_adapter_loads_total": ("counter", {"upstream", "result"}),
    "lorafleet_adapter_unloads_total": ("counter", {"upstream"}),
    "lorafleet_adapter_load_seconds": ("histogram", set()),
    "lorafleet_hot_set_size": ("gauge", {"upstream"}),
    "lorafleet_upstream_up": ("gauge", {"upstream"}),
    "lorafleet_routing_decisions_total": ("counter", {"upstream", "decision"}),
    "lorafleet_probe_warnings_total": ("counter", {"adapter", "version"}),
    "lorafleet_capture_sent_total": ("counter", set()),
    "lorafleet_capture_spooled_total": ("counter", set()),
    "lorafleet_capture_rejected_total": ("counter", {"reason"}),
    "lorafleet_capture_quarantined_total": ("counter", set()),
    "lorafleet_capture_spool_pending": ("gauge", set()),
    "lorafleet_drift_window_requests": ("gauge", {"adapter", "version"}),
    "lorafleet_drift_input_far_share": ("gauge", {"adapter", "version"}),
    "lorafleet_drift_input_length_distance": ("gauge", {"adapter", "version"}),
    "lorafleet_drift_output_length_ratio": ("gauge", {"adapter", "version"}),
    "lorafleet_output_invalid_rate": ("gauge", {"adapter", "version"}),
    "lorafleet_eval_invalid_rate": ("gauge", {"adapter", "version"}),
    "lorafleet_drift_dropped_total": ("counter", set()),
    "lorafleet_review_grade_mean": ("gauge", {"adapter", "version", "criterion"}),
    "lorafleet_review_grades": ("gauge", {"adapter", "version"}),
}


def test_metric_names_types_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    found = {}
    for field in metrics.__dataclass_fields__:
        metric = getattr(metrics, field)
        name = metric._name + ("_total" if metric._type == "counter" else "")
        found[name] = (metric._type, set(metric._labelnames))
    assert found == EXPECTED


async def test_requests_are_labelled_by_adapter_and_version(gw: Harness) -> None:
    await gw.chat(BASE)
    await gw.chat("pirate")
    await gw.chat("pirate@v9")
    text = (await gw.client.get("/metrics")).text
    assert 'lorafleet_requests_total{adapter="base",endpoint="chat",status="200",version="-"} 1.0' in text
    assert 'lorafleet_requests_total{adapter="pirate",endpoint="chat",status="200",version="v1"} 1.0' in text
    # unknown models never become label values
    assert 'lorafleet_requests_total{adapter="unknown",endpoint="chat",status="404",version="-"} 1.0' in text
    assert "v9" not in text
    assert 'lorafleet_prompt_tokens_total{adapter="pirate",version="v1"} 7.0' in text
    assert 'lorafleet_completion_tokens_total{adapter="pirate",version="v1"} 3.0' in text
    assert 'lorafleet_requests_in_flight{adapter="pirate"} 0.0' in text
    assert 'lorafleet_upstream_up{upstream="u0"} 1.0' in text
    assert "lorafleet_adapter_load_seconds_count 1.0" in text
