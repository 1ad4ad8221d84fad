"""One real (short) QLoRA run on the embedded SmolLM2-135M base: nf4 4-bit base, LoRA r16 on
q/k/v/o, a fixed intent answer learnt in a few steps; val loss must fall below the base's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.train.config import TrainConfig
from lorafleet.train.recipe import train

from lorafleet.adapter_files import inspect_peft_dir, servability_problems
from lorafleet.config import Settings
from lorafleet.registry import Registry

pytestmark = pytest.mark.integration
ANSWER = "[Intent: shipping] I am checking the delivery status with the carrier."
PROMPTS = ["Where is my parcel?", "My order has not arrived.", "Tracking has not updated since Monday.",
           "The courier lost my package.", "When will my desk be delivered?", "Is my order shipped yet?",
           "My delivery is late again.", "Can you check where my lamp is?"]


def _write(path: Path, prompts: list[str]) -> Path:
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ANSWER}],
             "label": "shipping"} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_qlora_on_embedded_base_learns_and_registers(embedded_base: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", base=embedded_base)
    config = TrainConfig(name="real-intents", train=_write(tmp_path / "train.jsonl", PROMPTS[:6]),
                         val=_write(tmp_path / "val.jsonl", PROMPTS[6:]), qlora=True, rank=16, lr=2e-3,
                         batch_size=3, max_steps=4, eval_steps=4, max_length=96, samples=0)
    result = train(config, settings, show_progress=False)
    assert result.version == "v1"
    assert result.val_loss is not None and result.base_val_loss is not None
    assert result.val_loss < result.base_val_loss * 0.7, (result.val_loss, result.base_val_loss)
    # measured as served: the adapter on the full-precision base still beats the base
    assert result.serving_val_loss is not None and result.serving_val_loss < result.base_val_loss
    resolved = Registry(settings.registry_dir).resolve("real-intents@v1")
    assert resolved.card.lora.quantization == "nf4" and resolved.card.base.weights_sha256
    assert resolved.card.metrics["serving_val_loss"] == result.serving_val_loss
    info = inspect_peft_dir(resolved.path)
    assert servability_problems(info, max_lora_rank=16) == [] and info.rank == 16
    assert all("lora_" in n for n in info.tensor_names)  # nothing vLLM would ignore (no embeddings/heads)
