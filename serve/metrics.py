"""Prometheus metrics of the gateway. Names are a contract (the Grafana dashboard uses them);
labels stay bounded: adapter names and versions come from the registry, never from the client
(unknown models are counted as adapter `unknown`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BASE_LABEL = "base"
NO_VERSION = "-"
UNKNOWN = "unknown"
# endpoint label of answers given before the proxy ran (auth, limits, unknown routes): a fixed set
ENDPOINT_OF_PATH = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models",
                    "/v1/responses": "responses", "/tokenize": "tokenize", "/detokenize": "detokenize",
                    "/metrics": "metrics", "/health": "health", "/ready": "ready"}


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    in_flight: Gauge
    adapter_loads: Counter
    adapter_unloads: Counter
    adapter_load_seconds: Histogram
    hot_set_size: Gauge
    upstream_up: Gauge
    routing_decisions: Counter
    probe_warnings: Counter
    capture_sent: Counter
    capture_spooled: Counter
    capture_rejected: Counter
    capture_quarantined: Counter
    capture_spool_pending: Gauge
    # live drift per adapter version over the last N requests (serve/drift.py); absent until measurable
    drift_window_requests: Gauge
    drift_input_far_share: Gauge
    drift_input_length_distance: Gauge
    drift_output_length_ratio: Gauge
    output_invalid_rate: Gauge
    eval_invalid_rate: Gauge
    drift_dropped: Counter
    review_grade_mean: Gauge
    review_grades: Gauge


def create_metrics(registry: CollectorRegistry) -> Metrics:
    """Register every gateway metric on `registry` (one per app, so tests stay independent)."""
    return Metrics(
        requests=Counter("lorafleet_requests_total", "Requests by adapter, version, endpoint and HTTP status.",
                         ["adapter", "version", "endpoint", "status"], registry=registry),
        duration=Histogram("lorafleet_request_duration_seconds", "Request latency until the last byte.",
                           ["adapter", "version", "endpoint"], buckets=LATENCY_BUCKETS, registry=registry),
        ttft=Histogram("lorafleet_time_to_first_token_seconds", "Time to the first streamed token.",
                       ["adapter", "version"], buckets=TTFT_BUCKETS, registry=registry),
        prompt_tokens=Counter("lorafleet_prompt_tokens_total", "Prompt tokens.", ["adapter", "version"],
                              registry=registry),
        completion_tokens=Counter("lorafleet_completion_tokens_total", "Completion tokens.",
                                  ["adapter", "version"], registry=registry),
        in_flight=Gauge("lorafleet_requests_in_flight", "Requests being served.", ["adapter"], registry=registry),
        adapter_loads=Counter("lorafleet_adapter_loads_total", "Adapter loads by upstream and result.",
                              ["upstream", "result"], registry=registry),
        adapter_unloads=Counter("lorafleet_adapter_unloads_total", "Adapter unloads (LRU or admin).",
                                ["upstream"], registry=registry),
        adapter_load_seconds=Histogram("lorafleet_adapter_load_seconds", "Seconds to load an adapter.",
                                       buckets=LOAD_BUCKETS, registry=registry),
        hot_set_size=Gauge("lorafleet_hot_set_size", "Adapters loaded per upstream.", ["upstream"],
                           registry=registry),
        upstream_up=Gauge("lorafleet_upstream_up", "1 when the upstream answers and is ready.", ["upstream"],
                          registry=registry),
        # decision: base | home | spread | spill (serve/routing.py ReplicaChooser): a fixed set
        routing_decisions=Counter("lorafleet_routing_decisions_total",
                                  "Replica choices by chosen upstream and why: base (least loaded), home (the "
                                  "adapter's ring home), spread (a hot adapter shared with the next replica), "
                                  "spill (home down or saturated).", ["upstream", "decision"], registry=registry),
        probe_warnings=Counter("lorafleet_probe_warnings_total",
                               "Adapters whose probe output equals the base's (likely a no-op adapter).",
                               ["adapter", "version"], registry=registry),
        capture_sent=Counter("lorafleet_capture_sent_total",
                             "Captured samples the review app accepted (refused ones are never counted here).",
                             registry=registry),
        capture_spooled=Counter("lorafleet_capture_spooled_total",
                                "Captured samples kept in the spool file: review app unreachable or refusing.",
                                registry=registry),
        # reason: queue_missing | unauthorized | forbidden | invalid (a fixed set: bounded labels)
        capture_rejected=Counter("lorafleet_capture_rejected_total",
                                 "Captured samples the review app refused (4xx), once each; they stay spooled.",
                                 ["reason"], registry=registry),
        capture_quarantined=Counter("lorafleet_capture_quarantined_total",
                                    "Corrupt capture spool lines moved to the .quarantine file.", registry=registry),
        capture_spool_pending=Gauge("lorafleet_capture_spool_pending",
                                    "Captured samples waiting in the spool file after the last flush.",
                                    registry=registry),
        drift_window_requests=Gauge("lorafleet_drift_window_requests",
                                    "Requests in the drift window of an adapter version (the last N).",
                                    ["adapter", "version"], registry=registry),
        drift_input_far_share=Gauge("lorafleet_drift_input_far_share",
                                    "Share of windowed prompts with no training prompt near them (MinHash).",
                                    ["adapter", "version"], registry=registry),
        drift_input_length_distance=Gauge("lorafleet_drift_input_length_distance",
                                          "KS statistic of windowed prompt lengths against the training prompts'.",
                                          ["adapter", "version"], registry=registry),
        drift_output_length_ratio=Gauge("lorafleet_drift_output_length_ratio",
                                        "Mean completion tokens in the window over the mean at the latest eval run.",
                                        ["adapter", "version"], registry=registry),
        output_invalid_rate=Gauge("lorafleet_output_invalid_rate",
                                  "Label tasks: share of windowed outputs naming no declared label (INVALID).",
                                  ["adapter", "version"], registry=registry),
        eval_invalid_rate=Gauge("lorafleet_eval_invalid_rate",
                                "Label tasks: the INVALID share the latest eval run measured (the baseline).",
                                ["adapter", "version"], registry=registry),
        drift_dropped=Counter("lorafleet_drift_dropped_total",
                              "Requests left out of drift because its queue was full.", registry=registry),
        # criterion: the capture queue's rubric criteria (a fixed set: bounded labels)
        review_grade_mean=Gauge("lorafleet_review_grade_mean",
                                "Mean review grade of the last N graded captured samples, per rubric criterion.",
                                ["adapter", "version", "criterion"], registry=registry),
        review_grades=Gauge("lorafleet_review_grades",
                            "Graded captured samples behind lorafleet_review_grade_mean (at most N).",
                            ["adapter", "version"], registry=registry),
    )


def endpoint_label(path: str) -> str:
    """The bounded `endpoint` label of a request path."""
    if path.startswith("/admin/"):
        return "admin"
    return ENDPOINT_OF_PATH.get(path, "other")


def count_answer(metrics: Metrics, path: str, status: int) -> None:
    """Count an answer the proxy never saw (auth, rate limits, body limit, unknown routes, errors)."""
    metrics.requests.labels(UNKNOWN, NO_VERSION, endpoint_label(path), str(status)).inc()
