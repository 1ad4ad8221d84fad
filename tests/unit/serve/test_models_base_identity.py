"""/v1/models reports the base's identity (weights sha256 from its manifest): eval caches key on it."""

from __future__ import annotations

from datetime import UTC, datetime

from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore

from lorafleet.base_model import MANIFEST_FILE, BaseManifest
from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import BASE, running


async def base_card(settings: ServeSettings, fake: FakeUpstream, keys: KeyStore) -> dict:
    async with running(settings, fake, keys) as gw:
        resp = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.admin}"})
    return next(m for m in resp.json()["data"] if m["id"] == BASE)


async def test_the_base_lists_its_weights_sha256(serve_settings: ServeSettings, fake: FakeUpstream,
                                                 key_store: KeyStore) -> None:
    folder = serve_settings.base_dir
    folder.mkdir(parents=True, exist_ok=True)
    manifest = BaseManifest(model_id="org/tiny", weights_sha256="c" * 64, parameters=1, dtype="bfloat16",
                            architecture="LlamaForCausalLM", created_at=datetime.now(UTC))
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json())
    card = await base_card(serve_settings, fake, key_store)
    assert card["lorafleet"] == {"kind": "base", "model_id": "org/tiny", "weights_sha256": "c" * 64}


async def test_a_base_without_a_manifest_lists_its_kind_only(serve_settings: ServeSettings, fake: FakeUpstream,
                                                             key_store: KeyStore) -> None:
    assert (await base_card(serve_settings, fake, key_store))["lorafleet"] == {"kind": "base"}
