"""Base variants: a QLoRA adapter is served only by replicas of its nf4 variant (configured, or a child
started on first use), and refused with a 503 naming the variant when there is none. Fake upstreams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.upstream import HttpUpstream
from lorafleet.serve.variants import router_variant, variant_launch
from pydantic import ValidationError

from lorafleet.base_variants import VLLM_BNB_ARGS, ServingBase, serving_base
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo, TrainedOn
from lorafleet.registry import Registry
from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import BASE, register_dummy, running


def register_qlora(registry: Registry, tmp: Path, name: str = "clauses-q", *, old_card: bool = False) -> None:
    src = tmp / f"src-{name}"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (src / "adapter_model.safetensors").write_bytes(b"not really weights")
    trained = None if old_card else TrainedOn(variant="nf4", path=str(tmp / "nowhere-nf4"))
    registry.register(name, src, AdapterCard(name=name, version="v1", base=BaseModelRef(id=BASE), trained_on=trained,
                                             lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"],
                                                           quantization="nf4")))


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    """A base folder with an nf4 twin beside it under the data dir (only config.json: fakes serve them)."""
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return base


@pytest.fixture
def settings(serve_settings: ServeSettings, base_dir: Path) -> ServeSettings:
    return serve_settings.updated(**{"base": base_dir})


@pytest.fixture
def registry(settings: ServeSettings, tmp_path: Path) -> Registry:
    registry = Registry(settings.registry_dir)
    register_dummy(registry, "intents", tmp_path)
    register_qlora(registry, tmp_path)
    register_qlora(registry, tmp_path, "old-q", old_card=True)
    return registry


def make_twin(settings: ServeSettings) -> Path:
    twin = settings.data_dir / "base" / f"{settings.base_dir.resolve().name}-nf4"
    twin.mkdir(parents=True)
    (twin / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return twin


async def test_repro_qlora_adapter_without_matched_upstream_is_a_503_naming_the_variant(
        settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore, registry: Registry) -> None:
    async with running(settings, fake, key_store) as gw:  # on --upstream: no child may be started
        for model in ("clauses-q", "old-q@v1"):  # a card with trained_on, and one from before it
            resp = await gw.chat(model)
            assert resp.status_code == 503, resp.text
            error = resp.json()["error"]
            assert error["code"] == "variant_unavailable" and error["type"] == "server_error"
            assert "base variant 'nf4'" in error["message"] and "--variant-upstream nf4=URL" in error["message"]
        # never a silent fallback: the full-precision upstream saw no load and no completion for them
        assert not fake.calls("/v1/load_lora_adapter") and not fake.calls("/v1/chat/completions")
        fake.enqueue("ok")
        assert (await gw.chat("intents")).status_code == 200  # plain LoRA still on the base


async def test_a_configured_variant_upstream_serves_only_the_qlora_adapters(
        settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore, registry: Registry) -> None:
    nf4 = FakeUpstream(BASE, api_key="upstream-key")
    async with running(settings, fake, key_store) as gw:
        replica = gw.state.variants.attach(HttpUpstream("nf4-0", "http://nf4", "upstream-key",
                                                        transport=nf4.transport()), "nf4")
        await replica.check()
        nf4.enqueue("matched")
        fake.enqueue("full")
        resp = await gw.chat("clauses-q")
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "matched"
        assert (await gw.chat("intents")).json()["choices"][0]["message"]["content"] == "full"
        assert set(nf4.loaded) == {"clauses-q@v1"} and set(fake.loaded) == {"intents@v1"}
        listed = (await gw.client.get("/admin/adapters", headers={"Authorization": f"Bearer {gw.admin}"})).json()
        assert {(r["name"], r["variant"], tuple(r["loaded"])) for r in listed["upstreams"]} == {
            ("u0", "base", ("intents@v1",)), ("nf4-0", "nf4", ("clauses-q@v1",))}


async def test_the_variant_child_starts_once_on_first_use(settings: ServeSettings, fake: FakeUpstream,
                                                          key_store: KeyStore, registry: Registry) -> None:
    twin = make_twin(settings)
    nf4 = FakeUpstream(BASE, api_key="upstream-key")
    started: list[ServingBase] = []

    async def start_child(variant: str, serving: ServingBase) -> tuple[HttpUpstream, None]:
        started.append(serving)
        await asyncio.sleep(0.2)  # vLLM takes a while: concurrent requests wait for the one start
        return HttpUpstream("nf4-local", "http://nf4", "upstream-key", transport=nf4.transport()), None

    async with running(settings, fake, key_store) as gw:
        gw.state.variants.children = True  # as when the gateway starts its own vLLM
        gw.state.variants.start_child = start_child
        for _ in range(3):
            nf4.enqueue("matched")
        answers = await asyncio.gather(*(gw.chat("clauses-q") for _ in range(3)))
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [(s.variant, s.path, s.vllm_args) for s in started] == [("nf4", twin, [])]
        nf4.enqueue("again")
        assert (await gw.chat("old-q")).status_code == 200 and len(started) == 1


async def test_a_failed_variant_start_is_a_503_with_the_fix_and_is_not_retried_at_once(
        settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore, registry: Registry) -> None:
    calls = 0

    async def start_child(variant: str, serving: ServingBase) -> tuple[HttpUpstream, None]:
        nonlocal calls
        calls += 1
        raise AssertionError("not reached: the twin is missing")

    async with running(settings, fake, key_store) as gw:
        gw.state.variants.children = True
        gw.state.variants.start_child = start_child
        for _ in range(2):
            resp = await gw.chat("clauses-q")
            assert resp.status_code == 503
            message = resp.json()["error"]["message"]
            assert "base variant 'nf4'" in message and "base prepare --variant nf4" in message
        assert calls == 0 and not fake.calls("/v1/chat/completions")


def test_gpu_launch_is_vllms_bitsandbytes_load_of_the_base(settings: ServeSettings, base_dir: Path) -> None:
    twin = make_twin(settings)
    card = AdapterCard(name="q", version="v1", base=BaseModelRef(id=BASE), trained_on=TrainedOn(variant="nf4"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"], quantization="nf4"))
    gpu = serving_base(card, base=base_dir, data_dir=settings.data_dir, engine="gpu")
    command = variant_launch(settings, gpu, BASE).command()
    assert command[command.index("--model") + 1] == str(base_dir.resolve())
    assert " ".join(VLLM_BNB_ARGS) in " ".join(command)
    assert VLLM_BNB_ARGS == ["--quantization", "bitsandbytes", "--load-format", "bitsandbytes"]
    assert command[command.index("--served-model-name") + 1] == BASE and "--enable-lora" in command
    cpu = variant_launch(settings, serving_base(card, base=base_dir, data_dir=settings.data_dir), BASE)
    assert cpu.model == twin and "--quantization" not in cpu.command()
    assert cpu.log_path.name == "vllm-nf4.log"


def test_router_variant_of_cards() -> None:
    def resolved(quant: str | None, trained: str | None):  # noqa: ANN202
        card = AdapterCard(name="a", version="v1", base=BaseModelRef(id=BASE),
                           trained_on=TrainedOn(variant=trained) if trained else None,
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"], quantization=quant))
        return type("R", (), {"card": card})()

    assert router_variant(resolved(None, None)) == "base"
    assert router_variant(resolved("nf4", None)) == "nf4"
    assert router_variant(resolved(None, "full")) == "base"
    assert router_variant(resolved("nf4", "nf4")) == "nf4"


@pytest.mark.parametrize("item", ["nf4", "int3=http://x", "nf4=ftp://x"])
def test_bad_variant_upstream_flags(item: str) -> None:
    with pytest.raises(ValidationError, match="VARIANT=URL"):
        ServeSettings(variant_upstreams=[item])
    assert ServeSettings(variant_upstreams=["nf4=http://a", "nf4=http://b"]).upstream.variant_urls() == {
        "nf4": ["http://a", "http://b"]}


async def test_admin_load_of_a_qlora_adapter_goes_to_its_variant_or_is_refused(
        settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore, registry: Registry) -> None:
    async with running(settings, fake, key_store) as gw:
        headers = {"Authorization": f"Bearer {gw.admin}"}
        resp = await gw.client.post("/admin/adapters/load", json={"model": "clauses-q"}, headers=headers)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "variant_unavailable"
        nf4 = FakeUpstream(BASE, api_key="upstream-key")
        await gw.state.variants.attach(HttpUpstream("nf4-0", "http://nf4", "upstream-key",
                                                    transport=nf4.transport()), "nf4").check()
        resp = await gw.client.post("/admin/adapters/load", json={"model": "clauses-q"}, headers=headers)
        assert resp.status_code == 200, resp.text
        assert set(nf4.loaded) == {"clauses-q@v1"} and not fake.loaded
