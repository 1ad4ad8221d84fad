"""The vLLM compatibility checks, before training (targets) and after saving (the files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.adapter_files import inspect_peft_dir, servability_problems
from lorafleet.errors import ConfigError, RegistryError


def module_names(model: Any) -> set[str]:
    """Last name component of every module (`q_proj`, `mlp`, …): what LoRA targets match."""
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def check_targets(targets: list[str], names: set[str]) -> None:
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(n for n in names if n.endswith("_proj"))
        raise ConfigError(f"--target-modules: {missing} do not exist in the base model",
                          hint=f"choose from {', '.join(linear) or sorted(names)[:10]}")


def check_saved_adapter(folder: Path, base_names: set[str], *, max_lora_rank: int = 16) -> None:
    """Refuse to register what vLLM would reject or silently ignore."""
    info = inspect_peft_dir(folder)
    problems = servability_problems(info, max_lora_rank=max_lora_rank, base_module_names=base_names)
    if problems:
        raise RegistryError(f"{folder}: vLLM cannot serve this adapter: {problems[0]}",
                            hint="train with rank 8/16, bias none, no DoRA/modules_to_save")
