"""The quick efficacy check that needs no server: val loss and a few generations, base vs adapter."""

from __future__ import annotations

from typing import Any

from lorafleet.train.dataset import Example
from pydantic import BaseModel


class Sample(BaseModel):
    prompt: str
    reference: str
    base: str
    adapter: str


def generate(model: Any, tokenizer: Any, example: Example, max_new_tokens: int = 32) -> str:
    import torch

    ids = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def side_by_side(model: Any, tokenizer: Any, examples: list[Example], n: int) -> list[Sample]:
    """Greedy generations of the base (adapter disabled) and the adapter on the first n examples."""
    samples = []
    model.eval()
    for ex in examples[:n]:
        adapter = generate(model, tokenizer, ex)
        with model.disable_adapter():
            base = generate(model, tokenizer, ex)
        samples.append(Sample(prompt=ex.prompt[-1]["content"], reference=ex.completion[0]["content"],
                              base=base, adapter=adapter))
    return samples


def base_val_loss(trainer: Any) -> float | None:
    """Val loss with the adapter switched off: the same data, loss mask and code path."""
    from transformers import EarlyStoppingCallback

    if trainer.eval_dataset is None:
        return None
    trainer.remove_callback(EarlyStoppingCallback)  # training is over; this evaluation is not a candidate
    with trainer.model.disable_adapter():
        return float(trainer.evaluate(metric_key_prefix="base")["base_loss"])


def serving_model(base: Any, adapter_dir: Any, device: Any = "cpu", bf16: bool = False) -> Any:
    """The adapter on the full-precision base, as vLLM serves it (a QLoRA run trained on nf4 weights),
    on `device`: the one the trainer's batches come to; in bf16 when training was (a 7B base in fp32
    would take ~28 GB of GPU memory)."""
    from lorafleet.train.model import load_base
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base, qlora=False, bf16=bf16), str(adapter_dir)).to(device)
    model.eval()
    return model


def val_loss_of(model: Any, batches: Any) -> float | None:
    """Token-weighted val loss of `model` over collated batches: the trainer's loss, outside the trainer.
    Under a process group each process sees its shard of val; the sums are added across processes."""
    import torch
    from lorafleet.train.trainer import IGNORE_INDEX, decoder_and_head, scored_positions_loss

    parts = decoder_and_head(model)
    if parts is None:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            # position_ids: a padding-free batch's example boundaries (train.config padding_free)
            kept = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids", "labels")
                    if k in batch}
            n = int((kept["labels"][:, 1:] != IGNORE_INDEX).sum())
            if n:
                total += float(scored_positions_loss(*parts, kept)) * n
                count += n
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)  # nccl wants it on the GPU
        torch.distributed.all_reduce(sums)
        total, count = sums.tolist()
    return total / count if count else None
