"""SFTTrainer with the plain causal-LM loss.

TRL 1.16 computes the loss through a fused, tiled LM head that also derives entropy and top-1
metrics; on CPU that costs more than the model itself (measured: ~3 s of a step on the tiny
model). The plain loss over the collator's labels (prompt tokens = -100) is the same NLL.
TRL's deprecation note recommends exactly this: subclass and override `compute_loss`.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer
from trl import SFTTrainer

MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "position_ids")


class LeanSFTTrainer(SFTTrainer):
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if model.training and "attention_mask" in inputs:
            self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        kept = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
        return Trainer.compute_loss(self, model, kept, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
