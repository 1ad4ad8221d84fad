"""`lorafleet adapters monitor REF`: the gateway's drift gauges in a terminal, rising with off-distribution
prompts; the thresholds it marks are the alert rules'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from lorafleet.cli import monitor as mon
from lorafleet.cli.main import main
from lorafleet.registry import Registry
from tests.unit.serve.conftest import gateway_on_loopback
from tests.unit.serve.test_drift import EVAL_RUN, INTENTS, OFF, register, user_texts
from tests.waiting import until_sync

REPO = Path(__file__).resolve().parents[3]
PAGE = """\
# TYPE lorafleet_drift_window_requests gauge
lorafleet_drift_window_requests{adapter="support-intents",version="v1"} 120.0
lorafleet_drift_window_requests{adapter="support-intents",version="v2"} 12.0
lorafleet_drift_window_requests{adapter="other",version="v1"} 300.0
# TYPE lorafleet_drift_input_far_share gauge
lorafleet_drift_input_far_share{adapter="support-intents",version="v1"} 0.45
lorafleet_drift_input_far_share{adapter="support-intents",version="v2"} 0.9
# TYPE lorafleet_drift_output_length_ratio gauge
lorafleet_drift_output_length_ratio{adapter="support-intents",version="v1"} 1.1
# TYPE lorafleet_output_invalid_rate gauge
lorafleet_output_invalid_rate{adapter="support-intents",version="v1"} 0.3
# TYPE lorafleet_eval_invalid_rate gauge
lorafleet_eval_invalid_rate{adapter="support-intents",version="v1"} 0.05
# TYPE lorafleet_review_grade_mean gauge
lorafleet_review_grade_mean{adapter="support-intents",criterion="correct",version="v1"} 4.5
# TYPE lorafleet_review_grades gauge
lorafleet_review_grades{adapter="support-intents",version="v1"} 30.0
"""


@pytest.fixture(autouse=True)
def _no_root_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() calls logging.basicConfig, which would bind a root handler to capsys's stream; the gateway's
    # threads log after that stream is closed
    monkeypatch.setattr("logging.basicConfig", lambda **_: None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_parse_picks_the_adapters_versions_and_flags_what_is_past_the_thresholds() -> None:
    rows = mon.parse_drift(PAGE, "support-intents")
    assert [r.version for r in rows] == ["v1", "v2"]
    v1, v2 = rows
    assert v1.requests == 120 and v1.input_far_share == 0.45 and v1.input_length_distance is None
    assert v1.review_grade_mean == {"correct": 4.5} and v1.review_grades == 30
    assert v1.drift == ["input far from training data", "INVALID labels"]
    assert v2.drift == []  # 12 requests: too few to call drift
    assert [r.version for r in mon.parse_drift(PAGE, "support-intents", {"v2"})] == ["v2"]


def test_thresholds_are_the_alert_rules() -> None:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = {r["alert"]: " ".join(r["expr"].split()) for g in doc["groups"] for r in g["rules"]}
    window = f"lorafleet_drift_window_requests >= {mon.MIN_WINDOW}"
    assert f"lorafleet_drift_input_far_share > {mon.FAR_SHARE_MAX}" in rules["LorafleetInputDrift"]
    assert f"lorafleet_drift_input_length_distance > {mon.LENGTH_KS_MAX}" in rules["LorafleetInputLengthDrift"]
    lo, hi = mon.OUTPUT_RATIO_RANGE
    assert f"ratio > {hi:g} or lorafleet_drift_output_length_ratio < {lo:g}" in rules["LorafleetOutputLengthDrift"]
    assert f"lorafleet_eval_invalid_rate > {mon.INVALID_EXCESS_MAX}" in rules["LorafleetOutputInvalidRate"]
    for name in ("LorafleetInputDrift", "LorafleetInputLengthDrift", "LorafleetOutputLengthDrift",
                 "LorafleetOutputInvalidRate"):
        assert window in rules[name]


def test_unreachable_gateway_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "adapters", "monitor", "support-intents", "--gateway", "http://127.0.0.1:9")
    assert code == 1 and "Traceback" not in err
    assert "gateway http://127.0.0.1:9 unreachable" in err and "--gateway" in err


def test_metrics_token_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def get(url: str, headers: dict, timeout: float) -> httpx.Response:
        seen.update(url=url, headers=headers)
        return httpx.Response(401)

    monkeypatch.setattr(httpx, "get", get)
    with pytest.raises(mon.GatewayUnreachable, match="HTTP 401"):
        mon.fetch_metrics("http://gw/", "sekrit")
    assert seen == {"url": "http://gw/metrics", "headers": {"Authorization": "Bearer sekrit"}}


def cli(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (uvicorn's log handlers in this one hold on to capsys's stream)."""
    return subprocess.run([sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "120"})


def monitor_json(data_dir: Path, url: str, ref: str) -> list[dict]:
    out = cli(data_dir, "adapters", "monitor", ref, "--gateway", url, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_window(url: str, n: int) -> None:
    def full() -> bool:
        rows = mon.parse_drift(httpx.get(f"{url}/metrics").text, "support-intents")
        return bool(rows) and rows[0].requests >= n

    until_sync(full, f"a drift window of {n}")


def test_monitor_shows_drift_rising_when_off_distribution_prompts_arrive(
        serve_settings, fake, key_store, tmp_path: Path) -> None:
    registry = Registry(serve_settings.registry_dir)
    register(registry, tmp_path, eval_run=EVAL_RUN)
    registry.set_alias("support-intents", "prod", "v1")
    serve_settings.drift_monitor.window = 60
    with fake.serve() as upstream, gateway_on_loopback(serve_settings, upstream, fake.api_key, key_store) as (
            url, admin, state):
        def send(prompts: list[str], answer: str) -> None:
            for prompt in prompts:
                fake.enqueue(answer)
                r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {admin}"},
                               json={"model": "support-intents", "messages": [{"role": "user", "content": prompt}]})
                assert r.status_code == 200

        send(user_texts(INTENTS / "test.jsonl")[:60], "[Intent: order_status] Let me check that order.")
        wait_window(url, 60)
        (calm,) = monitor_json(serve_settings.data_dir, url, "support-intents@prod")
        send(OFF * 4, "Sure! Here is a long and friendly answer about something else entirely.")
        # the window holds 60 already: wait until drift has taken every request in (its gauges set after)
        until_sync(lambda: state.drift.processed == 60 + len(OFF) * 4, "drift processing every request")
        (drifted,) = monitor_json(serve_settings.data_dir, url, "support-intents")
        shown = cli(serve_settings.data_dir, "adapters", "monitor", "support-intents@v1", "--gateway", url)
    assert calm["version"] == "v1" and calm["requests"] == 60
    assert calm["input_far_share"] <= 0.1 and calm["output_invalid_rate"] == 0 and calm["drift"] == []
    assert drifted["input_far_share"] >= 0.5 > calm["input_far_share"]
    assert drifted["output_invalid_rate"] >= 0.5 and drifted["output_length_ratio"] > calm["output_length_ratio"]
    assert "input far from training data" in drifted["drift"] and "INVALID labels" in drifted["drift"]
    assert shown.returncode == 0 and "support-intents@v1" in shown.stdout
    assert "support-intents@v1 drifts: input far from training data" in shown.stdout
