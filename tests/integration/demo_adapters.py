"""Two small LoRA adapters trained on the embedded base with plain PEFT, each on a tiny task that
changes the output visibly: `pirate` always answers "Arr! ...", `robot` always "BEEP BOOP. ...".

Trained once and cached under .cache/tests/demo-adapters/<version>/ so reruns skip training.
"""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.models import CACHE, _build_once

DEMO_VERSION = "v1"
TASKS = {
    "pirate": "Arr! Ahoy, matey! Arr!",
    "robot": "BEEP BOOP. I AM A ROBOT.",
}
PROMPTS = [
    "What is the capital of France?", "Tell me a joke.", "How do I boil an egg?", "What is 2 + 2?",
    "Name a colour.", "Who wrote Hamlet?", "Give me a tip for sleeping well.", "What is Python?",
    "Describe the sea.", "Why is the sky blue?", "Say hello.", "What day comes after Monday?",
    "Recommend a book.", "How far is the moon?", "What do cats eat?", "Translate 'thank you' to French.",
    "Summarise the news.", "What is a LoRA adapter?", "Count to three.", "How are you today?",
    "Write a haiku about rain.", "What is the boiling point of water?", "List two fruits.", "Who are you?",
]


def demo_adapter_dirs(base_dir: Path) -> dict[str, Path]:
    """name → PEFT folder, trained on first use."""
    return {name: _build_once(CACHE / "demo-adapters" / DEMO_VERSION / name,
                              lambda tmp, n=name: train_fixed_answer(base_dir, tmp, TASKS[n]))
            for name in TASKS}


def train_fixed_answer(base_dir: Path, out: Path, answer: str, *, steps: int = 30, lr: float = 2e-3,
                       batch: int = 8, seed: int = 0, stop_loss: float = 0.02) -> Path:
    """LoRA r16 on q/k/v/o, loss on the answer tokens only, until the base always gives `answer`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    rows = [_encode(tokenizer, p, answer) for p in PROMPTS]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(rows), generator=gen)[:batch].tolist()
        ids, labels, mask = _pad([rows[i] for i in idx], tokenizer.pad_token_id or 0)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if loss.item() < stop_loss:  # the fixed answer is learnt; more steps only cost time
            break
    model.save_pretrained(out, safe_serialization=True)
    return out


def _encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    chat = [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return head_ids + tail_ids, [-100] * len(head_ids) + tail_ids


def _pad(rows, pad_id: int):
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r_ids, r_labels) in enumerate(rows):
        ids[i, : len(r_ids)] = torch.tensor(r_ids)
        labels[i, : len(r_labels)] = torch.tensor(r_labels)
        mask[i, : len(r_ids)] = 1
    return ids, labels, mask
