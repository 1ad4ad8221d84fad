"""Live drift per adapter version: the computations, the gauges the gateway exports, the bounded queue."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from lorafleet.serve.drift import DriftMonitor, LabelFormat, ks_statistic, prompt_text
from lorafleet.serve.metrics import create_metrics
from lorafleet.serve.review_grades import ReviewGrades
from prometheus_client import CollectorRegistry, generate_latest

from lorafleet.card import AdapterCard, BaseModelRef, DatasetFile, LoraInfo
from lorafleet.registry import Registry
from tests.unit.serve.conftest import BASE, running

REPO = Path(__file__).resolve().parents[3]
INTENTS = REPO / "examples" / "data" / "support-intents"
PATTERN = r"\[Intent:\s*([^\]]+?)\s*\]"
LABELS = ["account_access", "cancel_order", "fraud_report", "order_status", "refund_request"]
OFF = ["Write a short poem about the autumn ocean and the moon.", "How do I reverse a linked list in Python?",
       "Translate to French: the weather is lovely today.", "What is the capital of Mongolia?",
       "Explain quantum entanglement to a ten year old.", "Give me a recipe for banana bread with walnuts.",
       "Summarize the plot of Hamlet in three sentences.", "List five prime numbers greater than one hundred."]


def user_texts(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]


def register(registry: Registry, tmp: Path, *, name: str = "support-intents",
             train: Path | None = INTENTS / "train.jsonl", eval_run: dict | None = None) -> None:
    src = tmp / f"src-{name}"
    src.mkdir(exist_ok=True)
    (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (src / "adapter_model.safetensors").write_bytes(b"not really weights")
    dataset = [DatasetFile(path=str(train), sha256="0" * 64, split="train")] if train else []
    card = AdapterCard(name=name, version="v1", base=BaseModelRef(id=BASE), dataset=dataset,
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]),
                       eval_runs=[eval_run] if eval_run else [])
    registry.register(name, src, card)


EVAL_RUN = {"run_id": "r1", "suite": "support-intents", "created_at": "2026-01-01T00:00:00+00:00",
            "output_tokens_mean": 10.0, "label_pattern": PATTERN, "labels": LABELS,
            "label_case_sensitive": False, "invalid_rate": 0.05}


@pytest.fixture(params=["compare-all", "lsh"])
def monitor(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DriftMonitor:
    """Both ways of finding the nearest training prompt: every signature, or MinHashLSH candidates first."""
    if request.param == "lsh":
        monkeypatch.setattr("lorafleet.serve.drift.BRUTE_MAX", 10)
    registry = Registry(tmp_path / "registry")
    register(registry, tmp_path, eval_run=EVAL_RUN)
    return DriftMonitor(registry, create_metrics(CollectorRegistry()), window=50)


def feed(monitor: DriftMonitor, prompts: list[str], output: str = "[Intent: refund_request] ok",
         tokens: int = 10) -> None:
    for p in prompts:
        monitor.observe("support-intents", "v1", [{"role": "user", "content": p}], output, tokens)
    monitor.process_pending()


def test_in_distribution_prompts_are_near_the_training_data(monitor: DriftMonitor) -> None:
    feed(monitor, user_texts(INTENTS / "test.jsonl")[:50])
    view = monitor.view("support-intents", "v1")
    assert view.requests == 50
    assert view.input_far_share is not None and view.input_far_share <= 0.1
    assert view.input_length_distance is not None and view.input_length_distance < 0.3


def test_off_distribution_prompts_raise_the_far_share_and_the_window_forgets(monitor: DriftMonitor) -> None:
    feed(monitor, user_texts(INTENTS / "test.jsonl")[:50])
    feed(monitor, OFF * 3)  # 24 of the last 50
    mixed = monitor.view("support-intents", "v1").input_far_share
    assert mixed is not None and 0.4 <= mixed <= 0.6
    feed(monitor, OFF * 7)  # the window (50) now holds only off-distribution prompts
    assert monitor.view("support-intents", "v1").input_far_share == 1.0


def test_long_prompts_move_the_length_distance(monitor: DriftMonitor) -> None:
    long = [" ".join(user_texts(INTENTS / "test.jsonl")[i:i + 6]) for i in range(30)]
    feed(monitor, long)
    assert monitor.view("support-intents", "v1").input_length_distance > 0.9


def test_output_length_ratio_and_invalid_rate_against_the_eval_run(monitor: DriftMonitor) -> None:
    prompts = user_texts(INTENTS / "test.jsonl")[:10]
    feed(monitor, prompts[:5], output="[Intent: order_status] Let me check.", tokens=10)
    feed(monitor, prompts[5:], output="I think you want to know about your parcel.", tokens=30)
    view = monitor.view("support-intents", "v1")
    assert view.output_length_ratio == pytest.approx(2.0)  # (5*10 + 5*30) / 10 / 10
    assert view.output_invalid_rate == 0.5 and view.eval_invalid_rate == 0.05


def test_ks_statistic() -> None:
    a = np.sort(np.arange(100, dtype=float))
    assert ks_statistic(a, a) == 0.0
    assert ks_statistic(a, a + 1000) == 1.0
    assert ks_statistic(a, np.sort(np.arange(50, 150, dtype=float))) == pytest.approx(0.5)


@pytest.mark.parametrize("text", ["[Intent: refund_request] ok", "[intent: REFUND_REQUEST]", "refund_request",
                                  "[Intent: refund] sure", "", "[Intent:   cancel_order  ] done.", "no label"])
@pytest.mark.parametrize("pattern", [PATTERN, None])
def test_label_format_agrees_with_the_eval_extraction(text: str, pattern: str | None) -> None:
    from lorafleet.evaluate.scoring import extract_label
    from lorafleet.evaluate.suite import Extraction

    extraction = Extraction(label_pattern=pattern, labels=LABELS)
    expected = extract_label(text, extraction) == "INVALID"
    assert LabelFormat(pattern, tuple(LABELS)).invalid(text) is expected


def test_prompt_text_takes_user_turns_and_completions_prompts() -> None:
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]
    assert prompt_text(messages) == "a\nc"
    assert prompt_text("plain") == "plain" and prompt_text(["x", "y"]) == "x\ny" and prompt_text(None) == ""


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry, tmp_path)
    metrics_registry = CollectorRegistry()
    monitor = DriftMonitor(registry, create_metrics(metrics_registry), queue_size=3)
    for _ in range(5):
        monitor.observe("support-intents", "v1", "hello", None, 3)
    assert monitor.process_pending() == 3
    assert "lorafleet_drift_dropped_total 2.0" in generate_latest(metrics_registry).decode()


def test_no_train_file_leaves_input_gauges_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry, tmp_path, train=tmp_path / "gone.jsonl", eval_run=EVAL_RUN)
    metrics_registry = CollectorRegistry()
    monitor = DriftMonitor(registry, create_metrics(metrics_registry))
    feed(monitor, ["hello", "there"])
    text = generate_latest(metrics_registry).decode()
    assert "lorafleet_drift_input_far_share{" not in text  # unmeasurable: no series, not a made-up 0
    assert 'lorafleet_drift_output_length_ratio{adapter="support-intents",version="v1"} 1.0' in text
    assert "no input drift" in caplog.text and "gone.jsonl" in caplog.text


def test_text_is_collected_only_for_label_tasks(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    register(registry, tmp_path, eval_run={**EVAL_RUN, "labels": None, "label_pattern": None})
    monitor = DriftMonitor(registry, create_metrics(CollectorRegistry()))
    assert monitor.wants_text("support-intents", "v1")  # not known yet
    feed(monitor, ["hello"])
    assert not monitor.wants_text("support-intents", "v1")


def metric(text: str, name: str, **labels: str) -> float | None:
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}{{{re.escape(sel)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def test_gateway_exports_drift_gauges_for_adapter_traffic(serve_settings, fake, key_store,
                                                                tmp_path: Path) -> None:
    registry = Registry(serve_settings.registry_dir)
    register(registry, tmp_path, eval_run=EVAL_RUN)
    async with running(serve_settings, fake, key_store) as gw:
        for prompt in user_texts(INTENTS / "test.jsonl")[:6]:
            fake.enqueue("[Intent: order_status] Let me check.")
            r = await gw.chat("support-intents", messages=[{"role": "user", "content": prompt}])
            assert r.status_code == 200
        for prompt in OFF[:4]:  # streamed: the text is read from the events
            fake.enqueue("Here is a poem about the sea")
            r = await gw.chat("support-intents", messages=[{"role": "user", "content": prompt}], stream=True)
            assert r.status_code == 200
        await gw.chat(BASE)  # the base has no training data: no drift series
        gw.state.drift.process_pending()
        text = (await gw.client.get("/metrics")).text
    labels = {"adapter": "support-intents", "version": "v1"}
    assert metric(text, "lorafleet_drift_window_requests", **labels) == 10
    assert metric(text, "lorafleet_drift_input_far_share", **labels) == pytest.approx(0.4)
    assert 0 <= metric(text, "lorafleet_drift_input_length_distance", **labels) <= 1
    # fake usage: completion tokens = words; (6*5 + 4*7) / 10 over the eval run's 10
    assert metric(text, "lorafleet_drift_output_length_ratio", **labels) == pytest.approx(0.58)
    assert metric(text, "lorafleet_output_invalid_rate", **labels) == pytest.approx(0.4)
    assert metric(text, "lorafleet_eval_invalid_rate", **labels) == 0.05
    assert 'adapter="base"' not in "".join(x for x in text.splitlines() if x.startswith("lorafleet_drift"))


def grades_transport(status: int = 200, rows: list[dict] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/queues/live/export" and request.url.params["format"] == "grades"
        assert request.headers["authorization"] == "Bearer admin"
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "no"}})
        return httpx.Response(200, text="".join(json.dumps(r) + "\n" for r in rows or []))
    return httpx.MockTransport(handler)


def test_review_grades_are_windowed_means_per_version_and_criterion() -> None:
    rows = [{"adapter": "support-intents@v1", "scores": {"helpful": s, "correct": 5}} for s in (1, 2, 4, 5)]
    rows += [{"adapter": "support-intents@v2", "scores": {"helpful": 3}},
             {"adapter": "support-intents@v2", "scores": {}, "choice": "A"},  # pairwise: no scores
             {"adapter": None, "scores": {"helpful": 1}}]
    metrics_registry = CollectorRegistry()
    poller = ReviewGrades("http://review", "admin", "live", create_metrics(metrics_registry), window=3,
                          transport=grades_transport(rows=rows))
    means = poller.poll()
    assert means == {("support-intents", "v1"): {"helpful": pytest.approx(11 / 3), "correct": 5.0},
                     ("support-intents", "v2"): {"helpful": 3.0}}
    text = generate_latest(metrics_registry).decode()
    assert metric(text, "lorafleet_review_grades", adapter="support-intents", version="v1") == 3
    assert metric(text, "lorafleet_review_grade_mean", adapter="support-intents", version="v1",
                  criterion="correct") == 5


def test_review_grades_stop_when_the_token_may_not_export(caplog: pytest.LogCaptureFixture) -> None:
    poller = ReviewGrades("http://review", "admin", "live", create_metrics(CollectorRegistry()),
                          transport=grades_transport(status=403))
    assert poller.poll() == {}
    assert poller.stopped_because == "HTTP 403" and "admin token" in caplog.text
