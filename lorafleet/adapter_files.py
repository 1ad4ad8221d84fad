"""Reading a PEFT LoRA folder without torch, and the rules vLLM needs to serve it."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.errors import RegistryError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class PeftInfo:
    """What a PEFT LoRA folder holds, read from its config and the safetensors header."""

    path: Path
    config: dict[str, Any]
    tensor_names: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.rank))

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return sorted(targets) if isinstance(targets, list) else [str(targets)]

    @property
    def base_model(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "unknown")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header (8-byte length + JSON) without loading tensors."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its header")
            (length,) = struct.unpack("<Q", raw_len)
            if length > 100_000_000 or length > path.stat().st_size - 8:
                raise ValueError("header length out of range")
            header = json.loads(f.read(length))
    except (OSError, ValueError) as exc:
        raise RegistryError(
            f"{path}: not a readable safetensors file ({exc.__class__.__name__})",
            hint="re-save the adapter with save_pretrained(safe_serialization=True)",
        ) from None
    if not isinstance(header, dict):
        raise RegistryError(f"{path}: safetensors header is not an object", hint="re-save the adapter")
    return header


def inspect_peft_dir(path: Path) -> PeftInfo:
    """Validate a PEFT LoRA folder's files; raise RegistryError naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise RegistryError(f"{path}: not a folder", hint="give the folder written by PEFT's save_pretrained")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise RegistryError(
            f"{path}: no {CONFIG_FILE}, so this is not a PEFT adapter folder",
            hint="give the folder written by PEFT's save_pretrained",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{config_path}: invalid JSON ({exc})", hint="re-save the adapter") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise RegistryError(f"{config_path}: peft_type is not LORA", hint="only LoRA adapters can be registered")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise RegistryError(f"{config_path}: field 'r' must be a positive integer", hint="re-save the adapter")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise RegistryError(
            f"{path}: no {WEIGHTS_FILE}",
            hint="save with safe_serialization=True; .bin weights are not accepted",
        )
    header = read_safetensors_header(weights)
    names = [k for k in header if k != "__metadata__"]
    if not any("lora_A" in k for k in names) or not any("lora_B" in k for k in names):
        raise RegistryError(f"{weights}: holds no lora_A/lora_B tensors", hint="is this really a LoRA adapter?")
    return PeftInfo(path=path, config=config, tensor_names=names)


def servability_problems(info: PeftInfo, *, max_lora_rank: int | None = None,
                         base_module_names: set[str] | None = None) -> list[str]:
    """Reasons vLLM would refuse (or silently ignore) this adapter; empty when servable."""
    cfg = info.config
    problems = []
    if info.rank not in VLLM_LORA_RANKS:
        problems.append(f"rank {info.rank} is not one vLLM serves; use one of {', '.join(map(str, VLLM_LORA_RANKS))}")
    if max_lora_rank is not None and info.rank > max_lora_rank:
        problems.append(f"rank {info.rank} is above the server's --max-lora-rank {max_lora_rank}")
    if cfg.get("use_dora"):
        problems.append("DoRA adapters are not served by vLLM; train with use_dora=False")
    if cfg.get("modules_to_save"):
        problems.append("modules_to_save is set; vLLM cannot serve extra trained modules")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')!r}; vLLM needs bias='none'")
    if any("embed_tokens" in n or "lm_head" in n for n in info.tensor_names if "lora_" not in n):
        problems.append("the adapter carries embedding/lm_head weights (added tokens); vLLM ignores them")
    if base_module_names is not None:
        missing = [t for t in info.target_modules if t not in base_module_names]
        if missing:
            problems.append(f"target modules {missing} do not exist in the base model")
    return problems
