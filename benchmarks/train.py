"""Peak RSS and training tokens/s: full fine-tuning vs LoRA vs QLoRA on the embedded base.

    .venv/bin/python benchmarks/train.py [--steps 6] [--batch 4] [--base DIR]

Same data (support-intents train, first examples), same steps, same batch; each mode runs in its
own subprocess so its peak RSS (ru_maxrss) is clean. LoRA/QLoRA use the recipe's own model
builders (lorafleet.train.model); the loop is plain PyTorch AdamW so all three do identical work.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support-intents" / "train.jsonl"
MODES = ("full", "lora", "qlora")


def worker(mode: str, base: Path, steps: int, batch: int) -> dict:
    import torch
    from lorafleet.train.config import TrainConfig
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    examples, _ = prepare(DATA, None)
    rows = []
    for ex in examples[: steps * batch]:
        ids = tokenizer.apply_chat_template(ex.prompt + ex.completion, tokenize=True, return_dict=True)["input_ids"]
        rows.append(ids)
    model = load_base(base, qlora=mode == "qlora")
    if mode != "full":
        model = get_peft_model(model, lora_config(TrainConfig(name="bench", train=DATA, rank=16)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        chunk = rows[step * batch:(step + 1) * batch]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "tokens_per_s": round(tokens / elapsed, 1),
            "train_s": round(elapsed, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "trainable_params": sum(p.numel() for p in params), "tokens": tokens, "last_loss": round(loss.item(), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--base", type=Path, default=REPO / ".cache" / "tests" / "base" / "smollm2-135m-instruct")
    parser.add_argument("--worker", choices=MODES)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base, args.steps, args.batch)))
        return
    if not (args.base / "config.json").is_file():
        sys.path.insert(0, str(REPO))
        from tests.fixtures.models import embedded_base_dir

        args.base = embedded_base_dir()
    results = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                               "--batch", str(args.batch), "--base", str(args.base)],
                              capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full = results["full"]
    print(f"base {args.base.name}, {args.steps} steps × batch {args.batch}, data {DATA.relative_to(REPO)}")
    print(f"{'mode':6} {'trainable':>12} {'peak RSS MB':>12} {'× full':>7} {'tok/s':>8} {'× full':>7} {'cpu s':>7}")
    for mode, r in results.items():
        mem_ratio = r['peak_rss_mb'] / full['peak_rss_mb']
        print(f"{mode:6} {r['trainable_params']:>12,} {r['peak_rss_mb']:>12.0f} {mem_ratio:>7.2f} "
              f"{r['tokens_per_s']:>8.1f} {r['tokens_per_s'] / full['tokens_per_s']:>7.2f} {r['cpu_s']:>7.1f}")


if __name__ == "__main__":
    main()
