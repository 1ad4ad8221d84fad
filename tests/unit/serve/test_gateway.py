"""The gateway against the fake upstream: routing, versions, auth, scopes, errors, models list."""

from __future__ import annotations

import asyncio

import pytest
from lorafleet.serve.app import create_app
from lorafleet.serve.config import ServeSettings

from lorafleet.errors import ConfigError
from tests.unit.serve.conftest import BASE, Harness, running


def _error(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_base_request_goes_to_base_without_a_load(gw: Harness) -> None:
    resp = await gw.chat(BASE)
    assert resp.status_code == 200
    assert resp.json()["model"] == BASE
    assert resp.json()["choices"][0]["message"]["content"] == f"{BASE} says hi"
    assert gw.fake.calls("/v1/load_lora_adapter") == []


@pytest.mark.parametrize(("model", "served"), [
    ("support-intents", "support-intents@v2"),
    ("support-intents@v1", "support-intents@v1"),
    ("support-intents@prod", "support-intents@v1"),
    ("support-intents@latest", "support-intents@v2"),
])
async def test_model_names_resolve_to_the_exact_version(gw: Harness, model: str, served: str) -> None:
    resp = await gw.chat(model)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == served
    assert gw.fake.calls("/v1/chat/completions")[-1].body["model"] == served
    loads = gw.fake.calls("/v1/load_lora_adapter")
    assert [c.body["lora_name"] for c in loads] == [served]
    assert loads[0].body["lora_path"].endswith(f"support-intents/{served.split('@')[1]}")


async def test_body_is_forwarded_with_only_model_rewritten(gw: Harness) -> None:
    await gw.chat("clauses", max_tokens=5, temperature=0.1, some_new_field={"x": 1})
    sent = gw.fake.calls("/v1/chat/completions")[-1].body
    assert sent == {"model": "clauses@v1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                    "temperature": 0.1, "some_new_field": {"x": 1}}
    assert sent is not None and gw.fake.calls("/v1/chat/completions")[-1].headers["authorization"] == \
        "Bearer upstream-key"


async def test_completions_endpoint(gw: Harness) -> None:
    resp = await gw.client.post("/v1/completions", json={"model": "pirate@v1", "prompt": "Once"},
                                headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["text"] == "pirate@v1 says hi"


async def test_canary_alias_is_sticky_per_user(gw: Harness) -> None:
    gw.state.registry.set_alias("support-intents", "canary", {"v1": 0.5, "v2": 0.5})
    seen = {}
    for user in [f"user-{i}" for i in range(12)]:
        first = (await gw.chat("support-intents@canary", user=user)).json()["model"]
        again = (await gw.chat("support-intents@canary", user=user)).json()["model"]
        assert first == again
        seen[user] = first
    assert set(seen.values()) == {"support-intents@v1", "support-intents@v2"}


# ---- auth and scopes ------------------------------------------------------------------------

async def test_missing_and_bad_keys_are_401(gw: Harness) -> None:
    resp = await gw.client.post("/v1/chat/completions", json={"model": BASE, "messages": []})
    assert resp.status_code == 401
    assert _error(resp)["type"] == "authentication_error"
    resp = await gw.chat(BASE, key="lf-not-a-real-key")
    assert resp.status_code == 401
    resp = await gw.client.get("/v1/models", headers={"Authorization": "Basic abc"})
    assert resp.status_code == 401


async def test_revoked_key_stops_working(gw: Harness) -> None:
    key = gw.key("*")
    assert (await gw.chat(BASE, key=key)).status_code == 200
    name = [k.name for k in gw.keys.list() if not k.admin][-1]
    gw.keys.revoke(name)
    assert (await gw.chat(BASE, key=key)).status_code == 401


async def test_scopes_allow_patterns_and_pinned_aliases(gw: Harness) -> None:
    key = gw.key("support-*,clauses@prod")
    assert (await gw.chat("support-intents@v1", key=key)).status_code == 200
    assert (await gw.chat(BASE, key=key)).status_code == 200
    denied = await gw.chat("clauses", key=key)
    assert denied.status_code == 403
    assert _error(denied)["param"] == "model"
    assert (await gw.chat("pirate", key=key)).status_code == 403
    # allowed by scope but the alias does not exist: 404, not 403
    assert (await gw.chat("clauses@prod", key=key)).status_code == 404
    assert not any(c.body.get("model", "").startswith(("clauses", "pirate"))
                   for c in gw.fake.calls("/v1/chat/completions"))


async def test_models_lists_only_what_the_key_may_use(gw: Harness) -> None:
    key = gw.key("support-*")
    resp = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    ids = [m["id"] for m in resp.json()["data"]]
    assert ids[0] == BASE
    assert set(ids[1:]) == {"support-intents", "support-intents@v1", "support-intents@v2",
                            "support-intents@prod", "support-intents@latest"}
    card = next(m for m in resp.json()["data"] if m["id"] == "support-intents@v1")
    assert card["lorafleet"]["version"] == "v1" and "prod" in card["lorafleet"]["aliases"]



async def test_models_lists_each_ref_once_and_a_weighted_alias_with_its_versions(gw: Harness) -> None:
    gw.state.registry.set_alias("support-intents", "canary", {"v1": 0.9, "v2": 0.1})
    resp = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.admin}"})
    data = resp.json()["data"]
    ids = [m["id"] for m in data]
    assert len(ids) == len(set(ids)), ids  # was: support-intents@canary once per version
    canary = next(m for m in data if m["id"] == "support-intents@canary")
    assert canary["lorafleet"] == {"kind": "alias", "adapter": "support-intents", "alias": "canary",
                                   "versions": {"v1": 0.9, "v2": 0.1}}
    assert canary["parent"] == BASE
    for version in ("v1", "v2"):  # each version behind it is listed as itself too
        card = next(m for m in data if m["id"] == f"support-intents@{version}")
        assert card["lorafleet"]["kind"] == "adapter" and "canary" in card["lorafleet"]["aliases"]
    prod = next(m for m in data if m["id"] == "support-intents@prod")
    assert prod["lorafleet"]["kind"] == "adapter" and prod["lorafleet"]["version"] == "v1"
    bare = next(m for m in data if m["id"] == "support-intents")
    assert bare["lorafleet"]["version"] == "v2"

async def test_admin_api_needs_an_admin_key(gw: Harness) -> None:
    user = gw.key("*")
    resp = await gw.client.get("/admin/adapters", headers={"Authorization": f"Bearer {user}"})
    assert resp.status_code == 403
    resp = await gw.client.get("/admin/adapters", headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 200 and resp.json()["upstreams"][0]["loaded"] == []


async def test_rate_limit_answers_429_with_retry_after(gw: Harness) -> None:
    key = gw.key("*", rpm=2)
    assert (await gw.chat(BASE, key=key)).status_code == 200
    assert (await gw.chat(BASE, key=key)).status_code == 200
    resp = await gw.chat(BASE, key=key)
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) >= 1
    assert _error(resp)["type"] == "rate_limit_error"


def test_no_auth_refused_off_loopback(tmp_path) -> None:
    settings = ServeSettings(data_dir=tmp_path, no_auth=True, host="0.0.0.0", upstreams=["http://x"])
    with pytest.raises(ConfigError, match="loopback"):
        create_app(settings)


async def test_no_auth_on_loopback_serves_without_a_key(serve_settings, fake, key_store, gw_registry) -> None:
    settings = serve_settings.updated(**{"no_auth": True})
    async with running(settings, fake, key_store) as gw:
        resp = await gw.client.post("/v1/chat/completions",
                                    json={"model": "pirate", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status_code == 200


# ---- errors ---------------------------------------------------------------------------------

async def test_bad_bodies_are_400_naming_the_field(gw: Harness) -> None:
    auth = {"Authorization": f"Bearer {gw.admin}", "Content-Type": "application/json"}
    resp = await gw.client.post("/v1/chat/completions", content=b"{not json", headers=auth)
    assert resp.status_code == 400 and _error(resp)["code"] == "invalid_json"
    resp = await gw.client.post("/v1/chat/completions", json={"model": BASE}, headers=auth)
    assert resp.status_code == 400 and _error(resp)["param"] == "messages"
    resp = await gw.client.post("/v1/chat/completions", json={"model": BASE, "messages": []}, headers=auth)
    assert resp.status_code == 400 and _error(resp)["param"] == "messages"
    resp = await gw.client.post("/v1/completions", json={"model": 5, "prompt": "x"}, headers=auth)
    assert resp.status_code == 400 and _error(resp)["param"] == "model"
    resp = await gw.client.post("/v1/chat/completions", json=[1, 2], headers=auth)
    assert resp.status_code == 400


async def test_body_over_the_limit_is_413(gw: Harness) -> None:
    big = "x" * (gw.state.settings.auth.max_body_bytes + 10)
    resp = await gw.chat(BASE, extra=big)
    assert resp.status_code == 413
    assert _error(resp)["code"] == "request_too_large"


@pytest.mark.parametrize("model", ["nope", "pirate@v9", "pirate@staging", "Bad Name!"])
async def test_unknown_models_are_404(gw: Harness, model: str) -> None:
    resp = await gw.chat(model)
    assert resp.status_code == 404
    assert _error(resp)["code"] == "model_not_found"


async def test_upstream_errors_pass_through_in_openai_shape(gw: Harness) -> None:
    gw.fake.enqueue("max_tokens is too large", status=400)
    resp = await gw.chat(BASE)
    assert resp.status_code == 400
    assert _error(resp)["message"] == "max_tokens is too large"


async def test_upstream_down_is_503_with_retry_after(gw: Harness) -> None:
    gw.state.pool.replicas[0].mark_down()
    resp = await gw.chat(BASE)
    assert resp.status_code == 503
    assert resp.headers["retry-after"]
    assert _error(resp)["code"] == "upstream_unavailable"
    ready = await gw.client.get("/ready")
    assert ready.status_code == 503
    assert (await gw.client.get("/health")).status_code == 200


async def test_failed_adapter_load_is_502_and_counted(gw: Harness) -> None:
    gw.fake.fail_loads = True
    resp = await gw.chat("pirate")
    assert resp.status_code == 502
    metrics = (await gw.client.get("/metrics")).text
    assert 'lorafleet_adapter_loads_total{result="error",upstream="u0"} 1.0' in metrics


async def test_overload_is_503(gw: Harness) -> None:
    gw.state.proxy.max_in_flight = 0
    resp = await gw.chat(BASE)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


async def test_unknown_route_is_openai_shaped_404(gw: Harness) -> None:
    resp = await gw.client.get("/v1/nothing")
    assert resp.status_code == 404
    _error(resp)


async def test_concurrent_mixed_requests_each_get_their_own_adapter(gw: Harness) -> None:
    models = [BASE, "pirate", "clauses", "support-intents@v1"] * 5
    results = await asyncio.gather(*(gw.chat(m) for m in models))
    for model, resp in zip(models, results, strict=True):
        served = resp.json()["model"]
        assert resp.json()["choices"][0]["message"]["content"] == f"{served} says hi"
        assert served.split("@")[0] == model.split("@")[0]
