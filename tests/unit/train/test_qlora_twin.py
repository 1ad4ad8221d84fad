"""QLoRA on CPU trains plain LoRA on the nf4 twin (lorafleet.train.model.qlora_on_twin): the same loss and
gradients as bitsandbytes' nf4 model on a batch, and the recipe records the twin and its served loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.train.config import TrainConfig

from lorafleet.base_variants import prepare_nf4
from tests.unit.train.helpers import intent, run_cli, write_jsonl


def _lora(model, config: TrainConfig):
    from lorafleet.train.model import lora_config
    from peft import get_peft_model

    return get_peft_model(model, lora_config(config))


def test_lora_on_the_twin_gives_the_bitsandbytes_loss_and_gradients(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit
    from lorafleet.train.model import load_base

    twin = tmp_path / "tiny-nf4"
    prepare_nf4(tiny_model, twin)
    config = TrainConfig(name="q", train=tmp_path / "unused.jsonl", rank=8, dropout=0.0, qlora=True)
    torch.manual_seed(0)
    bnb = _lora(load_base(tiny_model, qlora=True), config)
    plain = _lora(load_base(twin, qlora=False), config)
    assert any(isinstance(m, Linear4bit) for m in bnb.modules())
    assert not any(isinstance(m, Linear4bit) for m in plain.modules())
    # One adapter in both (lora_B made non-zero, so the adapter acts on the loss).
    generator = torch.Generator().manual_seed(1)
    adapter = {k: torch.randn(v.shape, generator=generator) * 0.05
               for k, v in bnb.state_dict().items() if "lora_" in k}
    for model in (bnb, plain):
        missing = model.load_state_dict(adapter, strict=False)
        assert not missing.unexpected_keys
        model.train()
    ids = torch.randint(5, 1000, (3, 24), generator=generator)
    labels = ids.clone()
    labels[:, :10] = -100  # loss on the answer positions only, as the recipe computes it
    losses, grads = [], []
    for model in (bnb, plain):
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    assert set(grads[0]) == set(grads[1]) and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Against the full-precision base the same adapter computes another loss: the twin is not the base.
    full = _lora(load_base(tiny_model, qlora=False), config)
    full.load_state_dict(adapter, strict=False)
    full.train()
    assert abs(full(input_ids=ids, labels=labels).loss.item() - losses[0]) > 1e-4


def test_a_cpu_qlora_run_trains_on_the_twin_and_reports_its_served_loss(tiny_model: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(6)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", [intent("my order has not arrived", "shipping")])
    data_dir = tmp_path / "data"
    code, stdout, stderr = run_cli(
        capsys, "--data-dir", str(data_dir), "train", "--base", str(tiny_model), "--train", str(train), "--val",
        str(val), "--name", "q-twin", "--rank", "8", "--max-steps", "2", "--eval-steps", "2", "--batch-size", "2",
        "--samples", "0", "--qlora", "--skip-fidelity", "--no-track", "--json")
    assert code == 0, stderr[-3000:]
    out = json.loads(stdout)
    twin = data_dir / "base" / f"{tiny_model.resolve().name}-nf4"
    assert out["trained_on"]["variant"] == "nf4" and out["trained_on"]["path"] == str(twin.resolve())
    # Trained on the very weights it is served on: its served loss is its val loss, not a second measurement.
    assert out["serving_val_loss"] == out["val_loss"] is not None
