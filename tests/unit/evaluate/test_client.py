"""The eval client against the fake OpenAI server over real loopback HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lorafleet.evaluate.cache import ResponseCache, cache_key
from lorafleet.evaluate.client import EndpointError, EvalClient, api_root
from lorafleet.evaluate.dataset import Sample

from lorafleet.formats import Message
from tests.fakes.openai_eval_server import RunningServer, free_port

PARAMS = {"temperature": 0.0, "max_tokens": 8}


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", messages=[Message(role="user", content=f"question {i}")], references=["x"])
            for i in range(n)]


def test_api_root_accepts_v1_suffix() -> None:
    assert api_root("http://h:1/v1/") == api_root("http://h:1") == "http://h:1"


def test_generates_in_order_and_records_the_served_version(fake: RunningServer) -> None:
    fake.state.answers["intents@latest"] = {"question 1": "one"}
    out = asyncio.run(EvalClient(fake.url, concurrency=3).generate("intents@latest", samples(5), PARAMS))
    assert list(out) == ["s0", "s1", "s2", "s3", "s4"]
    assert out["s1"].output == "one"
    assert out["s0"].served_model == "intents@v3"
    assert out["s0"].completion_tokens and out["s0"].latency_s > 0
    assert len(fake.state.requests) == 5
    assert fake.state.requests[0]["max_tokens"] == 8 and fake.state.requests[0]["model"] == "intents@latest"


def test_concurrency_is_bounded(fake: RunningServer) -> None:
    fake.state.delay_s = 0.05
    asyncio.run(EvalClient(fake.url, concurrency=3).generate("fake-base", samples(12), PARAMS))
    assert fake.state.max_in_flight == 3


def test_resolves_base_from_the_model_list(fake: RunningServer) -> None:
    assert asyncio.run(EvalClient(fake.url + "/v1").resolve_base()) == "fake-base"


def test_gateway_aliases_are_pinned_and_cache_follows_an_alias_move(fake: RunningServer, tmp_path: Path) -> None:
    fake.state.adapters.append("intents@v4")
    fake.state.pins = {"intents@latest": "v3"}
    runner = EvalClient(fake.url, cache=ResponseCache(tmp_path / "c.sqlite"))
    models = asyncio.run(runner.resolve_targets(["base", "intents@latest", "intents@v2"], base="base",
                                                base_model=None))
    assert models == {"base": "fake-base", "intents@latest": "intents@v3", "intents@v2": "intents@v2"}
    first = asyncio.run(runner.generate(models["intents@latest"], samples(2), PARAMS))
    assert first["s0"].output.startswith("intents@v3")
    fake.state.pins = {"intents@latest": "v4"}  # `latest` moved: nothing cached may answer for it
    models = asyncio.run(runner.resolve_targets(["intents@latest"], base="base", base_model=None))
    moved = asyncio.run(runner.generate(models["intents@latest"], samples(2), PARAMS))
    assert moved["s0"].output.startswith("intents@v4") and not moved["s0"].cached
    assert [r["model"] for r in fake.state.requests] == ["intents@v3"] * 2 + ["intents@v4"] * 2


def test_a_pin_to_an_unlisted_version_is_ignored(fake: RunningServer) -> None:
    fake.state.pins = {"intents@latest": "v9"}
    models = asyncio.run(EvalClient(fake.url).resolve_targets(["intents@latest"], base="base", base_model=None))
    assert models == {"intents@latest": "intents@latest"}


def test_retries_429_and_5xx_then_succeeds(fake: RunningServer) -> None:
    fake.state.fail_next = [429, 503, 500]
    out = asyncio.run(EvalClient(fake.url, concurrency=1, backoff_s=0.01).generate("fake-base", samples(2), PARAMS))
    assert len(out) == 2
    assert len(fake.state.requests) == 5


def test_gives_a_clear_error_after_the_retries(fake: RunningServer) -> None:
    fake.state.fail_next = [502] * 10
    with pytest.raises(EndpointError, match="failed 3 times.*HTTP 502") as exc:
        asyncio.run(EvalClient(fake.url, max_retries=2, backoff_s=0.01).generate("fake-base", samples(1), PARAMS))
    assert "resume" in exc.value.hint


def test_timeouts_are_retried_then_reported(fake: RunningServer) -> None:
    fake.state.delay_s = 0.5
    runner = EvalClient(fake.url, max_retries=1, backoff_s=0.01, timeout_s=0.1)
    with pytest.raises(EndpointError, match="failed 2 times.*ReadTimeout"):
        asyncio.run(runner.generate("fake-base", samples(1), PARAMS))
    assert len(fake.state.requests) == 2


def test_unknown_model_fails_at_once_with_the_servers_message(fake: RunningServer) -> None:
    with pytest.raises(EndpointError, match="404 for model 'nope'.*not found"):
        asyncio.run(EvalClient(fake.url, backoff_s=0.01).generate("nope", samples(3), PARAMS))
    assert len(fake.state.requests) <= 3


def test_bad_key_is_not_retried(fake: RunningServer) -> None:
    fake.state.api_key = "right"
    with pytest.raises(EndpointError, match="401"):
        asyncio.run(EvalClient(fake.url, api_key="wrong").generate("fake-base", samples(1), PARAMS))
    out = asyncio.run(EvalClient(fake.url, api_key="right").generate("fake-base", samples(1), PARAMS))
    assert out["s0"].output.startswith("fake-base says")


def test_unreachable_endpoint_is_an_endpoint_error() -> None:
    runner = EvalClient(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(EndpointError, match="ConnectError"):
        asyncio.run(runner.generate("m", samples(1), PARAMS))


def test_cache_serves_repeats_and_keys_on_params(fake: RunningServer, tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite")
    runner = EvalClient(fake.url, cache=cache)
    first = asyncio.run(runner.generate("fake-base", samples(4), PARAMS))
    again = asyncio.run(runner.generate("fake-base", samples(4), PARAMS))
    assert len(fake.state.requests) == 4
    assert all(c.cached for c in again.values()) and not any(c.cached for c in first.values())
    assert [c.output for c in again.values()] == [c.output for c in first.values()]
    asyncio.run(runner.generate("fake-base", samples(4), {**PARAMS, "max_tokens": 9}))
    assert len(fake.state.requests) == 8
    assert cache_key("http://h/", "m", [], {}) == cache_key("http://h", "m", [], {})
    cache.close()
    assert len(ResponseCache(tmp_path / "cache.sqlite")) == 8
