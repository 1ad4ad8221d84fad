"""The gateway's canary watcher against the fake upstream: each rollback signal, the review app being
down, and two gateways on one registry (one rollback record, both route to the stable version)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.promotion import canary_state, decisions
from lorafleet.promotion.canary_state import CanaryState, CanaryThresholds, CanaryWindow
from lorafleet.registry import Registry
from tests.fakes.openai_upstream import FakeUpstream, Reply
from tests.unit.serve.conftest import BASE, Harness, running
from tests.waiting import until

NAME = "support-intents"
PATTERN = r"\[Intent:\s*([^\]]+?)\s*\]"
LABELS = ["cancel_order", "order_status", "refund_request"]
EVAL_RUN = {"run_id": "r1", "suite": NAME, "created_at": "2026-01-01T00:00:00+00:00", "label_pattern": PATTERN,
            "labels": LABELS, "invalid_rate": 0.0}
GOOD = "[Intent: refund_request] I can help with that."
USERS = 80  # distinct OpenAI `user`s: the sticky 50% split sends about half to each version


@pytest.fixture
def settings(tmp_path: Path) -> ServeSettings:
    data = tmp_path / "data"
    data.mkdir()
    # canary_interval=0: no background rounds, the tests call check() themselves
    return ServeSettings(data_dir=data, base_name=BASE, probe=False, health_interval=3600, key_cache_ttl=0,
                         registry_ttl=0, hot_set=4, canary_interval=0, drift=False)


@pytest.fixture
def key_store(settings: ServeSettings) -> KeyStore:
    return KeyStore(settings.db_url)


@pytest.fixture
def registry(settings: ServeSettings, tmp_path: Path) -> Registry:
    registry = Registry(settings.registry_dir)
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (src / "adapter_model.safetensors").write_bytes(b"not really weights")
    for runs in ([EVAL_RUN], []):  # v1 was evaluated on the label suite; the canary v2 never was
        registry.register(NAME, src, AdapterCard(name=NAME, version="v1", base=BaseModelRef(id=BASE),
                                                 lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]),
                                                 eval_runs=runs))
    registry.set_alias(NAME, "prod", "v1")
    return registry


def start_canary(registry: Registry, *, min_samples: int = 10, **thresholds: float) -> CanaryState:
    """What `adapters promote NAME@v2 --to prod --canary 50` leaves: the split and its canary record."""
    state = CanaryState(id="c0ffee", name=NAME, alias="prod", stable="v1", canary="v2", percent=50,
                        window=CanaryWindow(min_seconds=0, min_samples=min_samples),
                        thresholds=CanaryThresholds(**thresholds))
    with registry.lock(NAME):
        registry.set_alias(NAME, "prod", state.split)
        canary_state.save(registry, NAME, {"prod": state})
    return state


@pytest.fixture
def fake() -> FakeUpstream:
    fake = FakeUpstream(BASE, api_key="upstream-key")
    fake.model_replies[f"{NAME}@v1"] = Reply(GOOD)
    return fake


async def traffic(gw: Harness, users: range = range(USERS), **body: object) -> dict[str, int]:
    """One request per user to NAME@prod; how many each version answered (any status)."""
    seen: dict[str, int] = {}
    for i in users:
        resp = await gw.chat(f"{NAME}@prod", user=f"user-{i}", **body)
        if resp.status_code != 200:
            version = f"status-{resp.status_code}"
        elif body.get("stream"):
            version = json.loads(resp.text.split("\n\n")[0].removeprefix("data: "))["model"]
        else:
            version = resp.json()["model"]
        seen[version] = seen.get(version, 0) + 1
    return seen


def rollbacks(gw: Harness, signal: str) -> float:
    value = gw.state.metrics_registry.get_sample_value("lorafleet_canary_rollbacks_total",
                                                        {"adapter": NAME, "signal": signal})
    return value or 0.0


async def test_error_rate_breach_rolls_the_alias_back_and_records_it(settings, registry, fake, key_store) -> None:
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply("boom", status=500)
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()  # picks the canary up
        await traffic(gw, range(6))
        assert await gw.state.canary.check() == []  # too few samples on each version: no decision yet
        assert canary_state.load(registry, NAME)["prod"].signals["error_rate"]["status"] == "waiting"
        assert isinstance(registry.aliases(NAME)["prod"], dict)
        await traffic(gw)
        made = await gw.state.canary.check()
        assert [d.kind for d in made] == ["rolled_back"]
        assert registry.aliases(NAME)["prod"] == "v1"
        card = registry.card(NAME, "v2")
        assert card.decisions[-1]["kind"] == "rolled_back"
        assert card.decisions[-1]["evidence"]["signal"] == "error_rate"
        assert canary_state.load(registry, NAME)["prod"].state == "rolled_back"
        assert rollbacks(gw, "error_rate") == 1
        metrics = (await gw.client.get("/metrics")).text
        assert f'lorafleet_promotion_decisions_total{{adapter="{NAME}",kind="rolled_back"}} 1.0' in metrics
        assert await traffic(gw, range(20)) == {f"{NAME}@v1": 20}  # every user is back on the stable version


async def test_invalid_rate_on_a_label_task_rolls_back_streamed_or_not(settings, registry, fake, key_store) -> None:
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply("Sorry, I am not sure what you mean.")  # names no label
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()
        seen = await traffic(gw, range(0, USERS, 2))
        seen2 = await traffic(gw, range(1, USERS, 2), stream=True)
        assert set(seen) == set(seen2) == {f"{NAME}@v1", f"{NAME}@v2"}  # both versions answered, 200s only
        made = await gw.state.canary.check()
        assert [d.kind for d in made] == ["rolled_back"]
        evidence = registry.card(NAME, "v2").decisions[-1]["evidence"]
        assert evidence["signal"] == "invalid_rate"
        invalid = evidence["signals"]["invalid_rate"]
        assert invalid["canary"]["rate"] == 1.0 and invalid["stable"]["rate"] == 0.0
        assert evidence["signals"]["error_rate"]["status"] == "ok"
        assert rollbacks(gw, "invalid_rate") == 1


async def test_a_canary_answering_on_label_is_not_rolled_back(settings, registry, fake, key_store) -> None:
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply("[Intent: cancel_order] Done.")
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()
        await traffic(gw)
        assert await gw.state.canary.check() == []
        state = canary_state.load(registry, NAME)["prod"]
        assert state.state == "passed"  # min_seconds=0, error_rate had its samples, nothing breached
        assert state.signals["invalid_rate"]["status"] == "ok"
        assert isinstance(registry.aliases(NAME)["prod"], dict)


async def test_a_probe_warning_on_the_canary_rolls_back(settings, registry, fake, key_store) -> None:
    start_canary(registry, min_samples=1000)  # no traffic signal could decide: the probe needs no samples
    settings.routing.probe = True
    fake.model_replies.clear()
    fake.same_output = True  # the adapters answer exactly like the base: the after-load probe warns
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()
        await traffic(gw, range(10))
        await until(lambda: gw.state.metrics_registry.get_sample_value(  # the probe runs after the load
            "lorafleet_probe_warnings_total", {"adapter": NAME, "version": "v2"}), "the probe's warning")
        made = await gw.state.canary.check()
        assert [d.kind for d in made] == ["rolled_back"]
        assert registry.card(NAME, "v2").decisions[-1]["evidence"]["signal"] == "probe_warnings"
        assert registry.card(NAME, "v2").metrics["probe_warnings"]  # recorded as promotion evidence too
        assert rollbacks(gw, "probe_warnings") == 1


def review_app(up: bool = True) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"items": 0})
    return httpx.MockTransport(handle)


def set_capture_grades(registry: Registry, version: str, mean: float, n: int = 12) -> None:
    review = {"capture": {"items": n, "grades": n, "criteria": {"accuracy": {"n": n, "mean": mean}}}}
    registry.update_card(f"{NAME}@{version}", review=review)


async def test_review_grades_of_captured_samples_roll_back(settings, registry, fake, key_store) -> None:
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply(GOOD)
    settings.review.url = "http://review"
    set_capture_grades(registry, "v1", 4.4)
    set_capture_grades(registry, "v2", 2.1)
    async with running(settings, fake, key_store, review_transport=review_app()) as gw:
        made = await gw.state.canary.check()
        assert [d.kind for d in made] == ["rolled_back"]
        review = registry.card(NAME, "v2").decisions[-1]["evidence"]["signals"]["review"]
        assert review["status"] == "breach" and review["criterion"] == "accuracy"
        assert rollbacks(gw, "review") == 1


async def test_repro_rollback_while_the_review_app_is_down(settings, registry, fake, key_store) -> None:
    """Issue 16: a rollback while the review app is down still happens; the grade signal says unavailable."""
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply("boom", status=502)
    settings.review.url = "http://review"
    set_capture_grades(registry, "v1", 4.0)
    set_capture_grades(registry, "v2", 4.0)
    async with running(settings, fake, key_store, review_transport=review_app(up=False)) as gw:
        await gw.state.canary.check()
        await traffic(gw)
        made = await gw.state.canary.check()
        assert [d.kind for d in made] == ["rolled_back"]
        evidence = registry.card(NAME, "v2").decisions[-1]["evidence"]
        assert evidence["signal"] == "error_rate"
        assert evidence["signals"]["review"]["status"] == "unavailable"
        assert registry.aliases(NAME)["prod"] == "v1"


async def test_two_gateways_on_one_registry_make_one_rollback(settings, registry, fake, key_store,
                                                             tmp_path: Path) -> None:
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v2"] = Reply("boom", status=500)
    other = FakeUpstream(BASE, api_key="upstream-key")
    other.model_replies = fake.model_replies
    async with running(settings, fake, key_store) as a, running(settings, other, key_store) as b:
        for gw in (a, b):
            await gw.state.canary.check()
            await traffic(gw)
        made = await asyncio.gather(a.state.canary.check(), b.state.canary.check())
        assert sorted(len(m) for m in made) == [0, 1]  # both saw the breach; the registry lock let one act
        journal = [d for d in decisions.journal(registry, NAME) if d.kind == "rolled_back"]
        assert len(journal) == 1
        assert len([d for d in registry.card(NAME, "v2").decisions if d["kind"] == "rolled_back"]) == 1
        assert rollbacks(a, "error_rate") + rollbacks(b, "error_rate") == 1
        for gw in (a, b):  # the gateway that did not decide routes to the stable version too
            assert await traffic(gw, range(10)) == {f"{NAME}@v1": 10}
        assert a.state.canary.status() == [] and b.state.canary.status() == []


async def test_only_versions_of_running_canaries_are_counted(settings, registry, fake, key_store) -> None:
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()
        await traffic(gw, range(5))
        assert gw.state.canary.status() == []
        start_canary(registry)
        await gw.state.canary.check()
        await traffic(gw, range(20))
        (watched,) = gw.state.canary.status()
        assert sum(t["requests"] for t in watched["tallies"].values()) == 20
    assert json.loads((registry.root / NAME / "canaries.json").read_text())["prod"]["state"] == "running"


async def test_the_background_rounds_pick_a_new_canary_up_and_roll_it_back(settings, registry, fake,
                                                                          key_store) -> None:
    settings.canary.interval = 0.2
    fake.model_replies[f"{NAME}@v2"] = Reply("boom", status=500)
    async with running(settings, fake, key_store) as gw:
        start_canary(registry, min_samples=10)  # after the gateway started: promote --canary on a live fleet
        # a refresh round picks it up (traffic before that is not counted: only running canaries are)
        await until(gw.state.canary.status, "the watcher picking the new canary up")
        await traffic(gw)
        # the counter goes up last, after the alias and the card were written (in the round's worker thread)
        await until(lambda: rollbacks(gw, "error_rate"), "the background rollback")
        assert registry.aliases(NAME)["prod"] == "v1"
        assert rollbacks(gw, "error_rate") == 1
        assert registry.card(NAME, "v2").decisions[-1]["evidence"]["signal"] == "error_rate"


async def test_repro_stable_answers_with_a_label_the_canarys_quick_run_never_saw_are_valid(
        settings, registry, fake, key_store) -> None:
    """The demo's quick run of v2 (30 prompts) saw fewer labels than v1 answers: v1's 'cancel' answers were
    counted INVALID (stable 10/26). Both versions' labels count."""
    quick = {**EVAL_RUN, "run_id": "r2", "labels": ["refund_request"]}  # the canary's own quick run
    registry.update_card(f"{NAME}@v2", eval_runs=[quick])
    start_canary(registry, min_samples=10)
    fake.model_replies[f"{NAME}@v1"] = Reply("[Intent: cancel_order] Done.")  # a label only v1's run saw
    fake.model_replies[f"{NAME}@v2"] = Reply(GOOD)
    async with running(settings, fake, key_store) as gw:
        await gw.state.canary.check()
        await traffic(gw)
        assert await gw.state.canary.check() == []
        signal = canary_state.load(registry, NAME)["prod"].signals["invalid_rate"]
        assert signal["stable"]["rate"] == 0.0 and signal["canary"]["rate"] == 0.0
