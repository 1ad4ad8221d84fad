"""`lorafleet adapters merge`: base + adapter folded into one full HF model, for deployments without LoRA."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from lorafleet.errors import BaseModelError, ConfigError
from lorafleet.fsutil import atomic_write_json
from lorafleet.registry import ResolvedAdapter


def merge(resolved: ResolvedAdapter, out: Path, *, base: Path | None = None) -> Path:
    """Write a merged model (weights + tokenizer + a merge note) to `out` atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty", hint="choose a new folder")
    base_dir = Path(base or resolved.card.base.path or "")
    if not (base_dir / "config.json").is_file():
        raise BaseModelError(f"{resolved.served_name}: base folder {base_dir} not found",
                             hint="pass --base with the folder it was trained on")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(resolved.path)).merge_and_unload()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        atomic_write_json(tmp / "lorafleet_merge.json", {"adapter": resolved.served_name,
                                                        "base": resolved.card.base.model_dump(mode="json")})
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
