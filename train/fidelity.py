"""The reference half of the fidelity check: HF transformers + PEFT on the base, teacher-forced.

The engine half (vLLM's greedy tokens and their logprobs) comes from the CLI, which may start an engine;
this module never talks to one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Used when the run has no val data (and for `adapters import`): short, varied, open-ended.
FIXED_PROBES = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three fruits.",
    "Explain what a computer is to a child.",
    "Give me a tip for sleeping well.",
    "What is 12 times 7?",
]


def probe_messages(examples: list[Any], n: int) -> list[list[dict[str, str]]]:
    """The prompt messages (no answer) of the first `n` examples; each example has `.row()["prompt"]`."""
    out = []
    for ex in examples[:n]:
        prompt = ex.row()["prompt"] if hasattr(ex, "row") else ex
        out.append([{"role": m["role"], "content": m["content"]} for m in prompt])
    return out


def fixed_probe_messages(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}] for p in FIXED_PROBES[:n]]


def prompt_token_ids(base_dir: Path, messages: list[list[dict[str, str]]]) -> list[list[int]]:
    """Each chat rendered with the base's template and tokenized exactly as vLLM's chat route would."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    ids = []
    for chat in messages:
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def reference_logprobs(base_dir: Path, adapter_dir: Path,
                       sequences: list[tuple[list[int], list[int]]]) -> list[tuple[list[float], list[int]]]:
    """For each (prompt ids, generated ids): the logprob PEFT gives each generated token, and its argmax there.

    float32 on CPU: the reference is the model as trained, whatever dtype the engine serves in; on a GPU
    with bf16 (as training there) bf16 on the GPU: a 7B base in float32 would need ~28 GB."""
    import torch
    from lorafleet.train.precision import device, torch_dtype, use_bf16
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    where = device()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch_dtype(use_bf16("auto")))
    model = PeftModel.from_pretrained(model, str(adapter_dir)).to(where)
    model.eval()
    out = []
    with torch.inference_mode():
        for prompt, generated in sequences:
            if not generated:
                out.append(([], []))
                continue
            ids = torch.tensor([prompt + generated], device=where)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logp.gather(1, torch.tensor(generated, device=where).unsqueeze(1)).squeeze(1)
            out.append((chosen.tolist(), logp.argmax(dim=-1).tolist()))
    return out


def mis_served_copy(adapter_dir: Path, out: Path, how: str) -> Path:
    """A copy of an adapter that an engine would serve wrongly, for measuring the tolerance and testing the
    refusal: `alpha2` (scale ×2, as a wrong alpha or rsLoRA mix-up), `permute_b` (lora_B rows shuffled, as a
    wrong module/shard mapping), `zero_b` (the adapter a no-op, as unmatched module names)."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in Path(adapter_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    if how == "alpha2":
        cfg = json.loads((out / "adapter_config.json").read_text())
        cfg["lora_alpha"] = 2 * cfg["lora_alpha"]
        (out / "adapter_config.json").write_text(json.dumps(cfg))
        return out
    tensors = load_file(str(out / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for key, value in tensors.items():
        if "lora_B" in key:
            if how == "zero_b":
                tensors[key] = torch.zeros_like(value)
            elif how == "permute_b":
                tensors[key] = value[torch.randperm(value.shape[0], generator=gen)].contiguous()
            else:
                raise ValueError(f"unknown mis-serving {how!r}")
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out
