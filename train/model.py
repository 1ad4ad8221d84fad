"""Loading the base (full precision or 4-bit nf4) and wrapping it with LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.train.config import TrainConfig

from lorafleet.base_model import BaseInfo, inspect_base
from lorafleet.base_variants import load_nf4
from lorafleet.errors import BaseModelError

# Non-reentrant: PyTorch's recommended mode; works with frozen inputs and keeps dropout masks.
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def check_base(base: Path) -> BaseInfo:
    """The base folder, refusing anything that is not a causal LM with a tokenizer."""
    info = inspect_base(Path(base))
    if not any((Path(base) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise BaseModelError(f"{base}: no tokenizer files", hint="save the tokenizer into the base folder")
    return info


def load_tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def on_cpu() -> bool:
    """True where torch sees no accelerator: the Trainer must be told (use_cpu), and accelerate too,
    or a launcher's processes do not form a CPU (gloo) group."""
    import torch

    return not torch.accelerator.is_available()


def qlora_on_twin(qlora: bool) -> bool:
    """Whether a QLoRA run trains plain LoRA on the base's nf4 twin instead of through bitsandbytes: on CPU.

    The twin holds, bit for bit, the weights bitsandbytes' nf4 forward multiplies by: each Linear weight
    quantised as `load_nf4` does, dequantised to the fp32 compute dtype (lorafleet.base_variants; tests
    prove it on every Linear weight). So LoRA on the twin in fp32 is the same forward and backward math,
    without bitsandbytes dequantising every weight on every step, which on CPU is its whole cost
    (docs/benchmarks.md). The card still records the nf4 twin (trained_on). On a GPU bitsandbytes stays:
    there its point is the 4-bit memory (the twin in fp32 takes 8× the weights' memory)."""
    return qlora and on_cpu()


def load_base(base: Path, *, qlora: bool, gradient_checkpointing: bool = False, bf16: bool = False) -> Any:
    """fp32 on CPU (bf16 autocast is slower there), bf16 when asked (a GPU with it: train.precision);
    nf4 4-bit weights with fp32 (or bf16) compute for QLoRA.
    With `gradient_checkpointing` each decoder layer's activations are recomputed in backward
    instead of kept: on a big base they, not the weights, dominate LoRA/QLoRA peak memory."""
    from lorafleet.train.precision import torch_dtype
    from transformers import AutoModelForCausalLM

    if not qlora:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(bf16))
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
            # The frozen base leaves no input of the checkpointed layers requiring grad; reentrant
            # checkpointing (a Trainer's default before transformers 5) would then drop LoRA's grads.
            model.enable_input_require_grads()
        return model
    from peft import prepare_model_for_kbit_training

    # The same load the nf4 twin is made from (lorafleet.base_variants), so it holds these very weights;
    # only the matmuls' compute dtype follows bf16 (it changes no stored nf4 code).
    model = load_nf4(base, compute_dtype="bfloat16" if bf16 else "float32")
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)


def lora_config(config: TrainConfig) -> Any:
    """Only what vLLM serves: plain LoRA, bias none, no DoRA, no modules_to_save."""
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none", use_dora=False,
                      task_type="CAUSAL_LM")
