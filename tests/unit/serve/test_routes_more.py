"""`/v1/responses`, `/tokenize`, `/detokenize` through the gateway (fake upstream): scoped by the
key like chat, `model` rewritten to the served version, the base when `model` is absent; and the
attempt loop's `classify()` and the aiohttp → httpx error mapping it relies on."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
from lorafleet.serve.proxy import AdapterLost, Failure, classify
from lorafleet.serve.upstream import UpstreamError, as_httpx_error

from tests.unit.serve.conftest import BASE, Harness


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_tokenize_and_detokenize_are_scoped_and_go_to_the_served_version(gw: Harness) -> None:
    key = gw.key("pirate")
    resp = await gw.client.post("/tokenize", json={"model": "pirate", "prompt": "a bb ccc"}, headers=_auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"model": "pirate@v1", "tokens": [1, 2, 3], "count": 3}
    assert gw.fake.calls("/tokenize")[-1].body["model"] == "pirate@v1"  # loaded, then asked
    resp = await gw.client.post("/detokenize", json={"model": "pirate@v1", "tokens": [2, 1]}, headers=_auth(key))
    assert resp.status_code == 200 and resp.json()["prompt"] == "xx x"

    denied = await gw.client.post("/tokenize", json={"model": "clauses", "prompt": "x"}, headers=_auth(key))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    unknown = await gw.client.post("/tokenize", json={"model": "nope", "prompt": "x"}, headers=_auth(gw.admin))
    assert unknown.status_code == 404
    anonymous = await gw.client.post("/detokenize", json={"tokens": [1]})
    assert anonymous.status_code == 401


async def test_tokenize_without_a_model_uses_the_base(gw: Harness) -> None:
    resp = await gw.client.post("/tokenize", json={"prompt": "one two"}, headers=_auth(gw.key("pirate")))
    assert resp.status_code == 200 and resp.json()["model"] == BASE
    bad = await gw.client.post("/detokenize", json={"tokens": "1 2"}, headers=_auth(gw.admin))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


async def test_responses_route_resolves_aliases_and_respects_scope(gw: Harness) -> None:
    key = gw.key("support-intents")
    resp = await gw.client.post("/v1/responses", json={"model": "support-intents@prod", "input": "hi"},
                                headers=_auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "support-intents@v1"
    assert gw.fake.calls("/v1/responses")[-1].body == {"model": "support-intents@v1", "input": "hi"}
    denied = await gw.client.post("/v1/responses", json={"model": "pirate", "input": "hi"}, headers=_auth(key))
    assert denied.status_code == 403
    metrics = (await gw.client.get("/metrics", headers=_auth(gw.admin))).text
    assert 'endpoint="responses"' in metrics


def test_classify_sorts_each_failure() -> None:
    request = httpx.Request("POST", "http://u/v1/chat/completions")
    assert classify(AdapterLost("a@v1")) is Failure.ADAPTER_LOST
    assert classify(UpstreamError("unreachable", status=503)) is Failure.DOWN
    assert classify(UpstreamError("bad adapter", status=502)) is Failure.OTHER
    assert classify(httpx.ConnectError("refused", request=request)) is Failure.DOWN
    assert classify(httpx.ReadError("reset", request=request)) is Failure.DROPPED
    assert classify(httpx.ReadTimeout("slow", request=request)) is Failure.TIMEOUT
    assert classify(httpx.ConnectTimeout("slow", request=request)) is Failure.DOWN
    assert classify(httpx.DecodingError("?", request=request)) is Failure.BROKEN
    assert classify(ValueError("ours")) is Failure.OTHER


@pytest.mark.parametrize(("error", "expected"), [
    (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
    (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
    (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
    (aiohttp.ClientError("other"), httpx.TransportError),
])
def test_aiohttp_failures_keep_their_httpx_meaning(error: Exception, expected: type) -> None:
    assert type(as_httpx_error(error)) is expected


async def test_aiohttp_refused_connection_is_a_connect_error() -> None:
    from lorafleet.serve.upstream import HttpUpstream
    from lorafleet.serve.vllm_child import free_port

    upstream = HttpUpstream("u", f"http://127.0.0.1:{free_port()}", None)
    with pytest.raises(httpx.ConnectError):
        await upstream.send("/v1/chat/completions", b"{}", stream=False)
    await upstream.aclose()


async def test_an_upstream_url_with_a_path_prefix_is_kept(fake) -> None:
    """`--upstream http://host/prefix`: httpx kept the prefix; the aiohttp path must too."""
    from fastapi import FastAPI
    from lorafleet.serve.upstream import HttpUpstream

    outer = FastAPI()
    outer.mount("/prefix", fake.app)
    from tests.fakes.openai_upstream import FakeUpstream

    holder = FakeUpstream("base-model", api_key="upstream-key")
    holder.app = outer
    with holder.serve() as url:
        upstream = HttpUpstream("u", f"{url}/prefix", "upstream-key")
        answer = await upstream.send("/v1/chat/completions", b'{"model": "base-model", "messages": []}', stream=False)
        await upstream.aclose()
    assert answer.status_code == 200 and b"base-model says hi" in answer.content


async def test_a_moved_alias_is_seen_on_the_next_request_despite_the_cache(serve_settings, fake, key_store,
                                                                           gw_registry) -> None:
    """The resolved-alias cache is dropped when the adapter's aliases file changes, not only at its TTL."""
    from tests.unit.serve.conftest import running

    settings = serve_settings.updated(**{"registry_ttl": 3600})
    async with running(settings, fake, key_store) as gw:
        assert (await gw.chat("support-intents@prod")).json()["model"] == "support-intents@v1"
        assert (await gw.chat("support-intents@prod")).json()["model"] == "support-intents@v1"  # cached
        gw_registry.set_alias("support-intents", "prod", "v2")
        assert (await gw.chat("support-intents@prod")).json()["model"] == "support-intents@v2"
