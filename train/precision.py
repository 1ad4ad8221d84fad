"""The dtype training (and the checks that rerun the trained model) compute in: bf16 on a GPU that
supports it, fp32 everywhere else (on CPU, bf16 autocast is slower and fp32 is what the demo measures)."""

from __future__ import annotations

from typing import Any, Literal

from lorafleet.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]


def bf16_available() -> bool:
    """True on a CUDA device with bfloat16 (Ampere and later); False on CPU or without torch.cuda."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def use_bf16(precision: Precision = "auto") -> bool:
    """Whether to train in bf16: `auto` where the GPU has it, `fp32` never, `bf16` or a clear error."""
    if precision == "fp32":
        return False
    available = bf16_available()
    if precision == "bf16" and not available:
        raise ConfigError("--precision bf16: no CUDA device with bfloat16 here",
                          hint="use --precision auto (fp32 on CPU) or run on a GPU with bf16 (Ampere or later)")
    return available


def torch_dtype(bf16: bool) -> Any:
    """torch.bfloat16 or torch.float32."""
    import torch

    return torch.bfloat16 if bf16 else torch.float32


def device() -> str:
    """Where a check outside the Trainer runs its model: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
