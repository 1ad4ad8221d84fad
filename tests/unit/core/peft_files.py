"""Write PEFT-shaped folders without torch: a correct safetensors header and zero-filled data."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def write_fake_peft(path: Path, *, rank: int = 8, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
           "bias": "none", "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    write_safetensors(path / "adapter_model.safetensors", {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (rank, 16),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (16, rank),
    })
    return path
