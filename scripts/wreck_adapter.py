"""Write a wrecked copy of a PEFT LoRA adapter: its lora_B matrices replaced by seeded noise, so the adapter
still loads and serves (same shapes, same config) but answers off-task. The demo's degraded canary.

    python scripts/wreck_adapter.py SRC_DIR OUT_DIR [--scale 0.2] [--seed 0]
    lorafleet adapters import OUT_DIR --name support-intents --skip-fidelity
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def wreck(src: Path, out: Path, *, scale: float = 0.2, seed: int = 0) -> int:
    """Copy `src` to `out` with every lora_B tensor drawn from N(0, scale); returns how many were replaced."""
    tensors = load_file(str(src / WEIGHTS))
    rng = np.random.default_rng(seed)
    replaced = 0
    for name, value in tensors.items():
        if "lora_B" in name:
            tensors[name] = rng.normal(0.0, scale, value.shape).astype(value.dtype)
            replaced += 1
    if not replaced:
        raise ValueError(f"{src / WEIGHTS}: no lora_B tensors (is this a LoRA adapter?)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(src / CONFIG, tmp / CONFIG)
    save_file(tensors, str(tmp / WEIGHTS))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=0.2, help="Standard deviation of the noise.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in (CONFIG, WEIGHTS):
        if not (args.src / name).is_file():
            sys.exit(f"wreck_adapter: {args.src / name} is missing; give a PEFT LoRA folder")
    try:
        n = wreck(args.src, args.out, scale=args.scale, seed=args.seed)
    except ValueError as exc:
        sys.exit(f"wreck_adapter: {exc}")
    print(f"{args.out}: {n} lora_B tensors replaced by N(0, {args.scale}) noise (seed {args.seed})")


if __name__ == "__main__":
    main()
