"""The lean loss (LM head only where a label is scored) equals the model's own causal-LM loss."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _model(tiny_model: Path, lora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    return model


def _batch(vocab: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a right-padded row
    labels = ids.clone()
    labels[:, :7] = -100  # prompt
    labels[2, 9:] = -100  # padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("lora", [False, True])
def test_lean_loss_matches_the_models_loss_and_gradients(tiny_model: Path, lora: bool) -> None:
    from lorafleet.train.trainer import decoder_and_head, scored_positions_loss

    model = _model(tiny_model, lora)
    batch = _batch(model.config.vocab_size)
    reference = model(**batch).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    parts = decoder_and_head(model)
    assert parts is not None
    ours = scored_positions_loss(*parts, batch)
    ours.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_num_items_in_batch_scales_a_sum(tiny_model: Path) -> None:
    from lorafleet.train.trainer import decoder_and_head, scored_positions_loss

    model = _model(tiny_model, lora=False)
    batch = _batch(model.config.vocab_size)
    scored = int((batch["labels"][:, 1:] != -100).sum())
    mean = scored_positions_loss(*decoder_and_head(model), batch)
    over_more = scored_positions_loss(*decoder_and_head(model), batch, torch.tensor(scored * 2))
    assert over_more.item() == pytest.approx(mean.item() / 2, rel=1e-5)


def test_val_loss_of_weights_batches_by_scored_tokens(tiny_model: Path) -> None:
    from lorafleet.train.efficacy import val_loss_of

    model = _model(tiny_model, lora=False)
    batch = _batch(model.config.vocab_size)
    halves = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    with torch.no_grad():
        whole = model(**batch).loss.item()
    assert val_loss_of(model, halves) == pytest.approx(whole, rel=1e-5)
    assert val_loss_of(model, [{**batch, "labels": torch.full_like(batch["labels"], -100)}]) is None


def test_serving_model_puts_the_adapter_on_the_full_precision_base(tiny_model: Path, tiny_adapter: Path) -> None:
    from lorafleet.train.efficacy import serving_model

    model = serving_model(tiny_model, tiny_adapter)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any("lora_A" in n for n, _ in model.named_parameters())
