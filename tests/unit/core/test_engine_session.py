"""The registration engine session: a running engine is reused only when it serves the base being checked,
its key comes from the environment, and what a session loads is unloaded at the end (fake vLLM over
httpx.MockTransport; the real one: tests/integration/test_fidelity_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lorafleet.cli import engine_session as es
from lorafleet.config import Settings
from lorafleet.errors import ConfigError


class FakeVllm:
    """/v1/models serving `root`, the runtime LoRA routes, /v1/completions; every request logged."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.headers.get("authorization"),
                              json.loads(request.content) if request.content else None))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base", "root": str(self.root), "parent": None}]})
        if request.url.path == "/v1/completions":
            lp = {"tokens": ["token_id:7"], "token_logprobs": [-0.5]}
            return httpx.Response(200, json={"choices": [{"index": 0, "logprobs": lp}]})
        return httpx.Response(200, text="ok")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeVllm:
    vllm = FakeVllm(tmp_path / "base")
    transport = httpx.MockTransport(vllm)
    real_client = httpx.Client
    monkeypatch.setattr(es.httpx, "get", lambda url, **kw: real_client(transport=transport).get(url, **kw))
    monkeypatch.setattr(es.httpx, "Client", lambda **kw: real_client(transport=transport, **kw))
    return vllm


def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> es.EngineSettings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return es.EngineSettings.from_core(Settings(data_dir=tmp_path / "data"))


def test_reuses_an_engine_on_the_same_base_and_unloads_what_it_loaded(fake: FakeVllm, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, monkeypatch, LORAFLEET_ENGINE_URL="http://127.0.0.1:9", LORAFLEET_ENGINE_API_KEY="sekret",
                 LORAFLEET_VLLM_DTYPE="float32")
    monkeypatch.setattr(es, "start_engine", lambda *a, **k: pytest.fail("started an engine"))
    with es.engine_session(tmp_path / "base", s, adapters={"a@v1": tmp_path / "a"}) as engine:
        assert engine.reused and engine.dtype == "float32" and engine.endpoint == "http://127.0.0.1:9/v1"
        choices = engine.completions("a@v1", [[1, 2]], max_tokens=4)
        assert choices[0]["logprobs"]["tokens"] == ["token_id:7"]
    paths = [(m, p) for m, p, _, _ in fake.requests]
    assert ("POST", "/v1/load_lora_adapter") in paths and paths[-1] == ("POST", "/v1/unload_lora_adapter")
    assert all(auth == "Bearer sekret" for _, _, auth, _ in fake.requests)
    body = next(b for _, p, _, b in fake.requests if p == "/v1/completions")
    assert body["temperature"] == 0 and body["return_tokens_as_token_ids"] is True and body["logprobs"] == 1


def test_an_engine_on_another_base_is_not_used(fake: FakeVllm, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, monkeypatch, LORAFLEET_ENGINE_URL="http://127.0.0.1:9")
    assert es.reuse_engine("http://127.0.0.1:9", s, tmp_path / "other-base") is None


def test_an_unreachable_engine_url_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="unreachable") as info:
        es.reuse_engine("http://127.0.0.1:9", s, tmp_path / "base")  # nothing listens on port 9
    assert "LORAFLEET_ENGINE_URL" in info.value.hint


def test_the_engine_key_is_secret_and_never_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """The runtime-LoRA key would show in /proc/*/cmdline as a flag: environment only, as a SecretStr."""
    from lorafleet.cli.main import main

    with pytest.raises(SystemExit):
        main(["adapters", "import", "--help"])
    text = capsys.readouterr().out
    assert "--engine-url" in text and "--engine-api-key" not in text
    assert "SecretStr" in str(es.EngineSettings.model_fields["engine_api_key"].annotation)
