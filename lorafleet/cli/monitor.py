"""`lorafleet adapters monitor REF`: the gateway's live drift gauges for one adapter, read from its /metrics.

The thresholds are the ones deploy/prometheus/alerts.yml alerts on (a test keeps them equal).
"""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from lorafleet.errors import LorafleetError

MIN_WINDOW = 50  # fewer requests in the window: too few to call drift
FAR_SHARE_MAX = 0.3
LENGTH_KS_MAX = 0.3
OUTPUT_RATIO_RANGE = (0.5, 2.0)
INVALID_EXCESS_MAX = 0.1

GAUGES = {
    "lorafleet_drift_window_requests": "requests",
    "lorafleet_drift_input_far_share": "input_far_share",
    "lorafleet_drift_input_length_distance": "input_length_distance",
    "lorafleet_drift_output_length_ratio": "output_length_ratio",
    "lorafleet_output_invalid_rate": "output_invalid_rate",
    "lorafleet_eval_invalid_rate": "eval_invalid_rate",
    "lorafleet_review_grades": "review_grades",
}


class GatewayUnreachable(LorafleetError):
    exit_code = 1


class VersionDrift(BaseModel):
    """One adapter version's drift gauges (None: the gateway cannot measure it yet) and what is off."""

    adapter: str
    version: str
    requests: int = Field(default=0, description="Requests in the drift window.")
    input_far_share: float | None = None
    input_length_distance: float | None = None
    output_length_ratio: float | None = None
    output_invalid_rate: float | None = None
    eval_invalid_rate: float | None = None
    review_grades: int | None = None
    review_grade_mean: dict[str, float] = Field(default_factory=dict, description="criterion → mean grade")
    drift: list[str] = Field(default_factory=list, description="The measures past their alert threshold.")

    @property
    def ref(self) -> str:
        return f"{self.adapter}@{self.version}"


def fetch_metrics(gateway: str, token: str | None, *, timeout: float = 10.0) -> str:
    """The gateway's /metrics page; unreachable or refused is a one-line error with the fix."""
    url = gateway.rstrip("/") + "/metrics"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise GatewayUnreachable(f"gateway {gateway} unreachable ({exc.__class__.__name__})",
                                 hint="start it with `lorafleet serve`, or pass --gateway URL") from None
    if resp.status_code in (401, 403):
        raise GatewayUnreachable(f"{url} refused the request (HTTP {resp.status_code})",
                                 hint="pass --metrics-token or set LORAFLEET_METRICS_TOKEN")
    if resp.status_code != 200:
        raise GatewayUnreachable(f"{url} answered HTTP {resp.status_code}", hint="is this a lorafleet gateway?")
    return resp.text


def parse_drift(text: str, adapter: str, versions: set[str] | None = None) -> list[VersionDrift]:
    """Every version of `adapter` (or only `versions`) that has drift series on the page, by version."""
    rows: dict[str, dict] = defaultdict(lambda: {"review_grade_mean": {}})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name not in GAUGES and sample.name != "lorafleet_review_grade_mean":
                continue
            if labels.get("adapter") != adapter or (versions is not None and labels.get("version") not in versions):
                continue
            row = rows[labels["version"]]
            if sample.name in GAUGES:
                value = sample.value
                row[GAUGES[sample.name]] = int(value) if GAUGES[sample.name] in ("requests", "review_grades") else value
            elif sample.name == "lorafleet_review_grade_mean":
                row["review_grade_mean"][labels["criterion"]] = sample.value
    out = [VersionDrift(adapter=adapter, version=v, **row) for v, row in rows.items()]
    for v in out:
        v.drift = drift_flags(v)
    return sorted(out, key=lambda v: _version_key(v.version))


def _version_key(version: str) -> tuple[int, str]:
    return (int(version[1:]), version) if version[1:].isdigit() else (1 << 30, version)


def drift_flags(v: VersionDrift) -> list[str]:
    """The measures past the alert thresholds (none while the window is too small)."""
    if v.requests < MIN_WINDOW:
        return []
    flags = []
    if v.input_far_share is not None and v.input_far_share > FAR_SHARE_MAX:
        flags.append("input far from training data")
    if v.input_length_distance is not None and v.input_length_distance > LENGTH_KS_MAX:
        flags.append("prompt lengths")
    lo, hi = OUTPUT_RATIO_RANGE
    if v.output_length_ratio is not None and not lo <= v.output_length_ratio <= hi:
        flags.append("output length")
    if (v.output_invalid_rate is not None and v.eval_invalid_rate is not None
            and v.output_invalid_rate - v.eval_invalid_rate > INVALID_EXCESS_MAX):
        flags.append("INVALID labels")
    return flags
