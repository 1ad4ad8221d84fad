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
    tensor_shapes: dict[str, list[int]] = field(default_factory=dict)

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
    shapes = {k: list(header[k].get("shape") or []) for k in names if isinstance(header[k], dict)}
    return PeftInfo(path=path, config=config, tensor_names=names, tensor_shapes=shapes)


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


# ---- the base's modules and shapes, from its safetensors headers (no weights loaded) ----------

BASE_INDEX_FILE = "model.safetensors.index.json"


def base_tensor_shapes(base_dir: Path) -> dict[str, list[int]]:
    """Every weight name in a HF base folder → its shape, read from the safetensors headers only."""
    base_dir = Path(base_dir)
    index = base_dir / BASE_INDEX_FILE
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise RegistryError(f"{index}: unreadable index ({exc.__class__.__name__})",
                                hint="re-save the base with save_pretrained") from None
    else:
        files = [p.name for p in sorted(base_dir.glob("*.safetensors"))]
    if not files:
        raise RegistryError(f"{base_dir}: no safetensors weights, so the adapter cannot be checked against it",
                            hint="pass --base with a Hugging Face model folder (`lorafleet base prepare`)")
    shapes: dict[str, list[int]] = {}
    for name in files:
        header = read_safetensors_header(base_dir / name)
        shapes.update({k: list(v.get("shape") or []) for k, v in header.items()
                       if k != "__metadata__" and isinstance(v, dict)})
    return shapes


def base_module_names(shapes: dict[str, list[int]], *, tied_embeddings: bool = True) -> set[str]:
    """Last name component of every module holding a weight (`q_proj`, `self_attn`, …), as LoRA targets match."""
    names = set()
    for key in shapes:
        parts = key.split(".")[:-1]  # drop "weight"/"bias"
        names.update(parts)
    if tied_embeddings:
        names.add("lm_head")  # tied to embed_tokens, so absent from the file but present in the model
    return names


def _base_key(adapter_key: str) -> tuple[str, str] | None:
    """`base_model.model.X.q_proj.lora_A.weight` → (`X.q_proj.weight`, "A"); None for non-LoRA tensors."""
    for side in ("A", "B"):
        marker = f".lora_{side}."
        if marker in adapter_key:
            module = adapter_key.split(marker)[0].removeprefix("base_model.model.")
            return f"{module}.weight", side
    return None


def shape_problems(info: PeftInfo, base_shapes: dict[str, list[int]]) -> list[str]:
    """LoRA tensors that do not fit the base: a module it lacks, or A/B shapes that differ from the weight's."""
    problems = []
    for key, shape in sorted(info.tensor_shapes.items()):
        found = _base_key(key)
        if found is None or "lora_embedding" in key:
            continue
        weight, side = found
        if weight not in base_shapes:
            problems.append(f"tensor {key}: the base has no weight {weight}")
            continue
        out_f, in_f = (base_shapes[weight] + [0, 0])[:2]
        want = [info.rank, in_f] if side == "A" else [out_f, info.rank]
        if shape != want:
            problems.append(f"tensor {key}: shape {shape}, but rank {info.rank} on the base's {weight} "
                            f"{base_shapes[weight]} needs {want}")
    return problems


def check_servable(info: PeftInfo, *, max_lora_rank: int, base_dir: Path | None) -> None:
    """Refuse (RegistryError) what vLLM would reject or silently ignore; every reason named, with its fix.

    With `base_dir`, the target modules and tensor shapes are checked against the base's safetensors headers."""
    names = shapes = None
    if base_dir is not None:
        shapes = base_tensor_shapes(base_dir)
        names = base_module_names(shapes)
    problems = servability_problems(info, max_lora_rank=max_lora_rank, base_module_names=names)
    if shapes is not None and not any("do not exist in the base" in p for p in problems):
        problems += shape_problems(info, shapes)[:3]
    if problems:
        where = f" on the base {base_dir}" if base_dir is not None else ""
        raise RegistryError(f"{info.path}: vLLM cannot serve this adapter{where}: {'; '.join(problems)}",
                            hint=_fixes(problems, names, max_lora_rank))


def _fixes(problems: list[str], names: set[str] | None, max_lora_rank: int) -> str:
    fixes = []
    text = " ".join(problems)
    if "--max-lora-rank" in text:
        fixes.append(f"serve with a larger --max-lora-rank (LORAFLEET_MAX_LORA_RANK, now {max_lora_rank}; "
                     "set it for `serve` and for this command alike) or retrain at a rank it allows")
    if "do not exist in the base" in text or "the base has no weight" in text or "shape" in text:
        linear = ", ".join(sorted(n for n in names or () if n.endswith("_proj")))
        fixes.append("pass --base with the base this adapter was trained on, or retrain it targeting modules "
                     f"this base has ({linear or 'see its config'})")
    if not fixes:
        fixes.append("retrain or re-save it with rank in vLLM's set, bias none, no DoRA/modules_to_save")
    return "; ".join(fixes)
