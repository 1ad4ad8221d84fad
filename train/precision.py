"""The dtype training (and the checks that rerun the trained model) compute in: bf16 on a GPU that
supports it, fp32 on CPU unless asked (`--precision bf16` on a CPU with native bf16 instructions:
AVX512-BF16 or AMX; docs/benchmarks.md ## Training measures it against fp32)."""

from __future__ import annotations

from typing import Any, Literal

from lorafleet.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]


def bf16_available() -> bool:
    """True on a CUDA device with bfloat16 (Ampere and later); False on CPU or without torch.cuda."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def cpu_bf16_native() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated, and slow."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_bf16(precision: Precision = "auto") -> bool:
    """Whether to train in bf16: `auto` where the GPU has it, `fp32` never, `bf16` or a clear error."""
    if precision == "fp32":
        return False
    available = bf16_available()
    if precision == "bf16" and not available:
        import torch

        if not torch.cuda.is_available() and cpu_bf16_native():
            return True
        raise ConfigError("--precision bf16: no CUDA device with bfloat16 and no CPU with native bf16 here",
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
