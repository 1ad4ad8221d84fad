"""A degraded canary rolled back automatically, against real vLLM (issue 16 §3).

A label task where the stable version answers on-label ("Arr! …" is label `Arr`, the eval run's pattern)
and the canary is the same adapter wrecked (scripts/wreck_adapter.py: its lora_B replaced by noise, the
demo's degraded canary), whose every output is INVALID. The gateway, a real
`lorafleet serve` in front of the session's vLLM, counts both versions' outputs and rolls the weighted
alias back once each has the window's minimum; the decision is on the card, the log and /metrics.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from lorafleet.serve.keys import KeyStore

from lorafleet.adapter_files import inspect_peft_dir
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.promotion import canary_state
from lorafleet.promotion.canary_state import CanaryState, CanaryThresholds, CanaryWindow
from lorafleet.registry import Registry
from tests.fixtures.models import REPO
from tests.integration.conftest import BASE_NAME, VllmServer, running_gateway
from tests.waiting import until_sync

NAME = "hail"
EVAL_RUN = {"run_id": "hail-eval", "suite": "hail", "created_at": "2026-01-01T00:00:00+00:00",
            "label_pattern": r"^\s*(Arr)!", "labels": ["Arr"], "invalid_rate": 0.0}
MIN_SAMPLES = 8
USERS = 40  # a 50% sticky split: about 20 users on each version


def chat(url: str, key: str, user: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {key}"},
                      json={"model": f"{NAME}@prod", "user": user, "max_tokens": 8, "temperature": 0,
                            "messages": [{"role": "user", "content": "What is the capital of France?"}]})


def test_a_canary_answering_off_label_is_rolled_back(vllm_server: VllmServer, demo_adapters: dict[str, Path],
                                                     embedded_base: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    registry = Registry(data_dir / "registry")
    wrecked = tmp_path / "wrecked"
    subprocess.run([sys.executable, "scripts/wreck_adapter.py", str(demo_adapters["pirate"]), str(wrecked)],
                   cwd=REPO, check=True)
    for folder, runs in ((demo_adapters["pirate"], [EVAL_RUN]), (wrecked, [])):
        info = inspect_peft_dir(folder)
        registry.register(NAME, folder, AdapterCard(
            name=NAME, version="v1", source="imported", base=BaseModelRef(id=BASE_NAME, path=str(embedded_base)),
            lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules), eval_runs=runs))
    state = CanaryState(id="real-canary", name=NAME, alias="prod", stable="v1", canary="v2", percent=50,
                        window=CanaryWindow(min_seconds=0, min_samples=MIN_SAMPLES), thresholds=CanaryThresholds())
    with registry.lock(NAME):
        registry.set_alias(NAME, "prod", state.split)
        canary_state.save(registry, NAME, {"prod": state})
    key = KeyStore(f"sqlite:///{data_dir / 'lorafleet.db'}").create(name="canary-test", admin=True)[1]
    monkeypatch.setenv("LORAFLEET_CANARY_INTERVAL", "1")
    monkeypatch.setenv("LORAFLEET_DRIFT", "false")
    with running_gateway(data_dir, [vllm_server.url], vllm_server.api_key) as url:
        # counted once the watcher reads the canary: its first judging round exports the versions' samples
        def watched() -> bool:  # the exposition sorts labels: adapter, signal, version
            return any(line.startswith("lorafleet_canary_samples{") and f'adapter="{NAME}"' in line
                       and 'version="v2"' in line for line in httpx.get(f"{url}/metrics").text.splitlines())

        until_sync(watched, "the watcher picking the canary up", timeout=120)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: chat(url, key, f"user-{i}"), range(USERS)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        by_version = {}
        for a in answers:
            body = a.json()
            by_version.setdefault(body["model"], []).append(body["choices"][0]["message"]["content"])
        assert len(by_version[f"{NAME}@v1"]) >= MIN_SAMPLES and len(by_version[f"{NAME}@v2"]) >= MIN_SAMPLES
        assert all(t.startswith("Arr!") for t in by_version[f"{NAME}@v1"])
        assert not any(t.startswith("Arr!") for t in by_version[f"{NAME}@v2"])

        # the rollback counter goes up last (after the alias and the card's decision): wait for a rollback
        rolled = f'lorafleet_canary_rollbacks_total{{adapter="{NAME}"'  # no series before the first rollback
        try:
            until_sync(lambda: rolled in httpx.get(f"{url}/metrics").text, "the rollback", timeout=120)
        except AssertionError:
            raise AssertionError((data_dir / "gateway.log").read_text()[-2000:]) from None
        assert registry.aliases(NAME)["prod"] == "v1", (data_dir / "gateway.log").read_text()[-2000:]
        decision = registry.card(NAME, "v2").decisions[-1]
        assert decision["kind"] == "rolled_back" and decision["evidence"]["signal"] == "invalid_rate"
        assert decision["evidence"]["signals"]["invalid_rate"]["canary"]["rate"] == 1.0
        assert decision["evidence"]["signals"]["review"]["status"] == "unavailable"  # no review app here
        metrics = httpx.get(f"{url}/metrics").text
        assert f'lorafleet_canary_rollbacks_total{{adapter="{NAME}",signal="invalid_rate"}} 1.0' in metrics
        assert f'lorafleet_promotion_decisions_total{{adapter="{NAME}",kind="rolled_back"}} 1.0' in metrics
        after = [chat(url, key, f"user-{i}").json()["model"] for i in range(6)]
        assert after == [f"{NAME}@v1"] * 6  # every user is back on the stable version
    assert "CANARY ROLLED BACK hail@prod" in (data_dir / "gateway.log").read_text()
