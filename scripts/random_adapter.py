"""Write a PEFT LoRA folder with random weights on a base: the demo's deliberately bad adapter.

    python scripts/random_adapter.py --base .lorafleet/base/smollm2-135m-instruct --out /tmp/random-adapter

Registered with `lorafleet adapters import`, it serves fine and answers nonsense: the promotion policy must
refuse it on its evaluation (examples/suites/support-intents-random.yaml), not on its files.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="HF base folder.")
    parser.add_argument("--out", type=Path, required=True, help="New PEFT folder.")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.base)
    # init_lora_weights=False: B is random too (PEFT's default B = 0 would be a no-op, caught by the probe).
    config = LoraConfig(r=args.rank, lora_alpha=8 * args.rank, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, bias="none", task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(args.out, safe_serialization=True)
    print(args.out)


if __name__ == "__main__":
    main()
