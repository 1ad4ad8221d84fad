"""The OpenAI request shapes are in the gateway's OpenAPI document (not parsed on the request
path), and bodies generated from them never get a 5xx or hang (issue 18 §3)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lorafleet.serve.app import create_app
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.upstream import HttpUpstream

from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import BASE
from tests.unit.serve.schema_bodies import request_bodies

ROUTES = {"/v1/chat/completions": ["model", "messages"], "/v1/completions": ["model", "prompt"]}
CASES = 40  # per route: a few seconds
SLOW = 5.0  # seconds: far above any answer of the fake upstream, far below a hang


@pytest.fixture
def app(serve_settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore, gw_registry):
    upstream = HttpUpstream("u0", "http://fake-vllm", fake.api_key, transport=fake.transport())
    app = create_app(serve_settings, upstreams=[upstream], key_store=key_store)
    app.state.admin = key_store.create(name="admin", admin=True)[1]
    return app


def _schema(app, path: str) -> dict:
    return app.openapi()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("path, required", ROUTES.items())
def test_openapi_publishes_request_shape(app, path: str, required: list[str]) -> None:
    schema = _schema(app, path)
    assert schema["required"] == required
    for field in ("temperature", "n", "stop", "seed", "stream_options", "top_k", "min_p", "repetition_penalty",
                  "structured_outputs", "logprobs"):
        assert field in schema["properties"], field
    assert schema["additionalProperties"] is True  # vLLM takes fields OpenAI does not document


def test_request_shape_is_not_parsed_on_the_hot_path(app) -> None:
    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    for path in ROUTES:
        assert routes[path].dependant.body_params == [], f"{path} would make FastAPI parse the body"


def _model_and_body(app, path: str):
    """Bodies from the published schema, with `model` drawn from what the gateway serves (and junk)."""
    models = st.sampled_from([BASE, "support-intents", "support-intents@prod", "pirate@v1", "no-such", ""])
    schema = _schema(app, path)
    return st.tuples(models, request_bodies(schema, wrong=0.0) | request_bodies(schema, wrong=0.15))


@pytest.mark.parametrize("path", ROUTES)
def test_fuzzed_bodies_get_no_5xx_and_no_hang(app, path: str) -> None:
    seen: list[tuple[int, float]] = []
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {app.state.admin}"}

        @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(case=_model_and_body(app, path))
        def check(case) -> None:
            model, body = case
            if model or "model" not in body:
                body = {**body, "model": model}
            body["max_tokens"] = 4  # generation length is not what is under test
            start = time.monotonic()
            resp = client.post(path, content=json.dumps(body), headers=headers)
            took = time.monotonic() - start
            seen.append((resp.status_code, took))
            assert resp.status_code < 500, (body, resp.text)
            assert took < SLOW, body
            if resp.status_code != 200:
                assert set(resp.json()["error"]) >= {"message", "type", "code"}  # OpenAI's shape

        check()
    assert len(seen) == CASES
    assert {s for s, _ in seen} & {200}  # some bodies went all the way through


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'{"model": 1}', b"[" * 200_000, b'{"model":"x"' * 50,
                                 '{"model": "\udcff"}'.encode("utf-8", "surrogatepass"), b"\xff\xfe"])
def test_malformed_bodies_are_4xx(app, raw: bytes) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ROUTES:
            resp = client.post(path, content=raw, headers={"Authorization": f"Bearer {app.state.admin}"})
            assert 400 <= resp.status_code < 500, (path, raw[:40], resp.text)
