"""A real Prometheus scrapes a running gateway and every query of the Grafana dashboard returns data.

No vLLM: the gateway (`lorafleet serve --upstream`, a subprocess) fronts the fake upstream; a stand-in
page exposes the vLLM engine series the dashboard reads (their names are checked against the installed
vLLM by tests/unit/deploy/test_metrics_queries.py). Traffic covers every panel: in- and off-distribution
prompts (drift), streams (TTFT), a 404 and a 500, two adapters through a hot set of one (loads and
unloads), a no-op adapter (probe warning), capture into a fake review app whose grades are polled.
Prometheus runs on 127.0.0.1 on a free port with a temp TSDB, loads deploy/prometheus/alerts.yml, needs
no network, and is stopped by pid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from lorafleet.serve.vllm_child import free_port

from lorafleet.registry import Registry
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.review_server import ReviewState, review_server
from tests.integration.conftest import BASE_NAME, running_gateway
from tests.unit.deploy import promql
from tests.unit.deploy.paths import DASHBOARDS, PROMETHEUS
from tests.unit.serve.test_drift import EVAL_RUN, INTENTS, OFF, register, user_texts

PROMETHEUS_BIN = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS_BIN is None, reason="prometheus missing: run scripts/system-deps.sh")
VLLM_PAGE = b"""# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="smollm2-135m-instruct"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="smollm2-135m-instruct"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="smollm2-135m-instruct"} 0.12
"""
RATE_WINDOW = "20s"
METRICS_TOKEN = "scrape-token"  # the gateway's /metrics needs it, as in deploy/prometheus/prometheus.yml


@contextmanager
def vllm_metrics_standin() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(VLLM_PAGE)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextmanager
def prometheus(tmp: Path, targets: dict[str, str]) -> Iterator[str]:
    port = free_port()
    (tmp / "metrics_token").write_text(METRICS_TOKEN)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(PROMETHEUS / "alerts.yml")],
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()]}
    for job in config["scrape_configs"]:
        if job["job_name"] == "lorafleet-gateway":
            job["authorization"] = {"type": "Bearer", "credentials_file": str(tmp / "metrics_token")}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PROMETHEUS_BIN, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a cold start on a loaded CI machine
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(url: str, expr: str) -> list:
    """An instant query; Grafana's `label_values(series, label)` goes to the label-values API as Grafana sends it."""
    variable = promql.LABEL_VALUES.match(expr)
    if variable:
        series, label = variable.groups()
        resp = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": series}, timeout=5).json()
        assert resp["status"] == "success", (expr, resp)
        return resp["data"]
    resp = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert resp["status"] == "success", (expr, resp)
    return resp["data"]["result"]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for where, expr in (q for d in DASHBOARDS for q in promql.dashboard_queries(d)):
        expr = expr.replace("$__rate_interval", RATE_WINDOW).replace('"$adapter"', '".*"')
        out.append((where, expr))
    return out


def test_prometheus_scrapes_the_gateway_and_every_dashboard_query_has_data(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    data_dir = tmp_path / "data"
    registry = Registry(data_dir / "registry")
    register(registry, tmp_path, eval_run=EVAL_RUN)
    register(registry, tmp_path, name="noop")
    fake = FakeUpstream(BASE_NAME, api_key="upstream-key")
    review = ReviewState(queues={"live-capture"})
    review.grades["live-capture"] = [{"adapter": "support-intents@v1", "scores": {"correct": g}} for g in (4, 5, 3)]
    monkeypatch.setenv("LORAFLEET_REVIEW_POLL_INTERVAL", "1")
    monkeypatch.setenv("LORAFLEET_DRIFT_WINDOW", "20")
    monkeypatch.setenv("LORAFLEET_METRICS_TOKEN", METRICS_TOKEN)
    with fake.serve() as upstream, review_server(review) as rv, vllm_metrics_standin() as vllm, running_gateway(
            data_dir, [upstream], "upstream-key", "--no-auth", "--hot-set", "1", "--review-url", rv.url,
            "--review-token", "tok", "--review-queue", "live-capture", "--capture", "support-intents=1.0") as gw:
        def chat(model: str, content: str, **body: object) -> httpx.Response:
            return httpx.post(f"{gw}/v1/chat/completions", timeout=10,
                              json={"model": model, "messages": [{"role": "user", "content": content}], **body})

        fake.same_output = True  # noop answers like the base: the probe after its load warns
        assert chat("noop", "hello").status_code == 200
        deadline = time.monotonic() + 60  # the probe runs after the load, in the background
        assert httpx.get(f"{gw}/metrics").status_code == 401  # a token is set: no token, no metrics
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        while "lorafleet_probe_warnings_total{" not in httpx.get(f"{gw}/metrics", headers=scrape).text:
            assert time.monotonic() < deadline, "no probe warning"
            time.sleep(0.1)
        fake.same_output = False
        assert chat("no-such-adapter", "x").status_code == 404
        with prometheus(tmp_path, {"lorafleet-gateway": gw.removeprefix("http://"), "vllm": vllm}) as prom:
            prompts = user_texts(INTENTS / "test.jsonl")
            for i in range(8):  # a few seconds of traffic while Prometheus scrapes every second
                for p in prompts[i * 4:(i + 1) * 4]:
                    fake.enqueue("[Intent: order_status] Let me check.")
                    assert chat("support-intents", p).status_code == 200
                fake.enqueue("Here is a poem about the sea")
                assert chat("support-intents", OFF[i], stream=True).status_code == 200
                assert chat(BASE_NAME, "hi", stream=True).status_code == 200
                fake.enqueue("broken", status=500)
                assert chat("support-intents", "boom").status_code == 500
                if i % 3 == 0:  # a hot set of one: loading noop again unloads support-intents
                    assert chat("noop", "hello").status_code == 200
                time.sleep(0.8)
            exprs = dashboard_exprs()
            deadline = time.monotonic() + 60  # rate() needs two scrapes with data; slow under load
            while True:
                empty = [(where, e) for where, e in exprs if not query(prom, e)]
                if not empty or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert empty == [], "dashboard queries without data:\n" + "\n".join(f"{w}: {e}" for w, e in empty)
            targets = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
            assert {t["health"] for t in targets} == {"up"}, targets
            groups = httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"]
            assert {g["name"] for g in groups} == {"lorafleet", "lorafleet-drift"}
            bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
            assert bad == []
            far = query(prom, 'lorafleet_drift_input_far_share{adapter="support-intents",version="v1"}')
            assert 0 < float(far[0]["value"][1]) < 1
            grade = query(prom, 'lorafleet_review_grade_mean{adapter="support-intents",criterion="correct"}')
            assert float(grade[0]["value"][1]) == 4.0
    assert time.monotonic() - started < 90, "the test should finish well within a minute or so"
    assert json.loads(json.dumps(review.received))  # captured samples reached the review app
