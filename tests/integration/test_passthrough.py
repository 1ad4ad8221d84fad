"""Every generation field vLLM accepts works through the gateway as it does direct (issue 18 §3):
the same request, sent with the openai SDK to the gateway and to the shared vLLM, gets the same
answer under greedy or seeded sampling. Short answers (max_tokens 8): the fields are under test,
not generation."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.integration.conftest import BASE_NAME, Gateway, VllmServer

MESSAGES = [{"role": "user", "content": "Name three colours."}]
CASES: dict[str, dict[str, Any]] = {
    "logprobs": {"temperature": 0, "logprobs": True, "top_logprobs": 3},
    "n_seed": {"n": 3, "seed": 7, "temperature": 1.0},
    "stop": {"temperature": 0, "stop": [",", "."], "max_tokens": 16},
    "vllm_extras": {"seed": 11, "temperature": 0.9,
                    "extra_body": {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3, "min_tokens": 3}},
    "json_schema": {"temperature": 0, "max_tokens": 24, "response_format": {
        "type": "json_schema", "json_schema": {"name": "pick", "schema": {
            "type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
            "required": ["colour"]}}}},
    "choice": {"temperature": 0, "extra_body": {"structured_outputs": {"choice": ["yes", "no"]}}},
}


@pytest.fixture(scope="module")
def clients(gateway: Gateway, vllm_server: VllmServer) -> tuple[openai.OpenAI, openai.OpenAI]:
    """(through the gateway, straight to vLLM)."""
    via = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.admin_key, max_retries=0, timeout=120)
    direct = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key=vllm_server.api_key, max_retries=0, timeout=120)
    return via, direct


def _chat(client: openai.OpenAI, model: str, fields: dict[str, Any]) -> dict[str, Any]:
    fields = {"max_tokens": 8, **fields}
    resp = client.chat.completions.create(model=model, messages=MESSAGES, **fields)
    return _comparable(resp.model_dump())


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """What must match: choices (text, finish reason, logprobs to 4 places) and usage; not ids or times."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    usage = answer.get("usage") or {}
    return {"choices": rounded(answer["choices"]),
            "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}}


@pytest.mark.parametrize("case", CASES)
def test_chat_fields_pass_through(clients, case: str) -> None:
    via, direct = clients
    got, want = _chat(via, BASE_NAME, CASES[case]), _chat(direct, BASE_NAME, CASES[case])
    assert got == want
    if case == "n_seed":
        assert len(got["choices"]) == 3
    if case == "logprobs":
        assert len(got["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3
    if case == "json_schema":
        assert json.loads(got["choices"][0]["message"]["content"])["colour"] in {"red", "green", "blue"}
    if case == "choice":
        assert got["choices"][0]["message"]["content"] in {"yes", "no"}


def test_adapter_fields_pass_through(clients, gateway: Gateway) -> None:
    """An adapter under seeded sampling with vLLM's extras: the gateway's pirate == vLLM's pirate@v1."""
    via, direct = clients
    fields = {"seed": 3, "temperature": 0.8, "n": 2, "extra_body": {"top_k": 20}}
    got = _chat(via, "pirate", fields)  # loads pirate@v1 into vLLM under its served name
    assert got == _chat(direct, "pirate@v1", fields)


def _stream(client: openai.OpenAI, model: str) -> tuple[str, dict[str, Any] | None, int]:
    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage.model_dump() for c in chunks if c.usage is not None]
    return text, (usage[-1] if usage else None), sum(1 for c in chunks if not c.choices)


def test_stream_include_usage_passes_through(clients) -> None:
    via, direct = clients
    got, want = _stream(via, BASE_NAME), _stream(direct, BASE_NAME)
    assert got == want
    assert got[1] is not None and got[1]["completion_tokens"] > 0  # the client asked for usage: it gets it
    assert got[2] == 1  # exactly one usage chunk


def test_completions_fields_pass_through(clients) -> None:
    via, direct = clients
    fields = {"max_tokens": 8, "logprobs": 2, "seed": 5, "temperature": 0.7, "n": 2, "stop": ["\n\n"],
              "extra_body": {"top_k": 10, "repetition_penalty": 1.1}}

    def complete(client: openai.OpenAI) -> dict[str, Any]:
        return _comparable(client.completions.create(model=BASE_NAME, prompt="The sky is", **fields).model_dump())

    got = complete(via)
    assert got == complete(direct)
    assert len(got["choices"]) == 2 and got["choices"][0]["logprobs"]["top_logprobs"]


def test_fuzzed_bodies_answer_as_vllm_does(gateway: Gateway, vllm_server: VllmServer) -> None:
    """A few bodies from the published shape, valid and not: the gateway's status is vLLM's, never
    a 5xx of its own (the unit fuzz covers many more against the fake)."""
    import httpx
    from hypothesis import HealthCheck, given, settings

    from tests.unit.serve.schema_bodies import request_bodies

    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()["paths"]["/v1/chat/completions"]["post"][
        "requestBody"]["content"]["application/json"]["schema"]
    pairs: list[tuple[int, int]] = []
    with httpx.Client(timeout=60) as http:
        @settings(max_examples=12, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(body=request_bodies(schema, wrong=0.1))
        def check(body: dict[str, Any]) -> None:
            body = {**body, "model": BASE_NAME, "max_tokens": 4, "stream": False}
            if isinstance(body.get("n"), int):
                body["n"] = min(body["n"], 2)
            raw = json.dumps(body)
            got = http.post(f"{gateway.url}/v1/chat/completions", content=raw, headers=_json(gateway.admin_key))
            want = http.post(f"{vllm_server.url}/v1/chat/completions", content=raw, headers=_json(vllm_server.api_key))
            pairs.append((got.status_code, want.status_code))
            assert got.status_code == want.status_code, (body, got.text[:300], want.text[:300])

        check()
    assert len(pairs) == 12


def _json(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
