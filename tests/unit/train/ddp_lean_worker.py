"""Run by test_ddp_lean.py under `torchrun --nproc_per_node 2` (CPU, gloo): one LeanSFTTrainer per process, its model
in accelerate's DDP wrapper, each rank its own batch. Rank 0 writes what the test checks as JSON to argv[2]."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main(tiny_model: Path, out: Path) -> None:
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from lorafleet.train.trainer import LeanSFTTrainer
    from peft import LoraConfig, get_peft_model
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
    from trl import SFTConfig

    state = PartialState(cpu=True)
    rank = state.process_index
    torch.manual_seed(0)  # the same weights on both ranks, as a launcher's processes have
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    rows = [{"prompt": [{"role": "user", "content": f"where is parcel {i}{' please' * (i % 3)}?"}],
             "completion": [{"role": "assistant", "content": f"[Intent: shipping] number {i} " + "ok " * i}]}
            for i in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, use_cpu=True, report_to="none", per_device_train_batch_size=2,
                         gradient_checkpointing=False, bf16=False, max_length=128, completion_only_loss=True)
        trainer = LeanSFTTrainer(model=model, args=args, processing_class=tokenizer,
                                 train_dataset=Dataset.from_list(rows))
    wrapped = trainer.accelerator.prepare_model(trainer.model)
    wrapped.train()
    mine = [trainer.train_dataset[i] for i in ((0, 3, 5) if rank == 0 else (1, 6))]  # ranks differ
    batch = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels")} for r in mine])
    scored = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    total = scored.clone()
    torch.distributed.all_reduce(total)

    head_rows: list[int] = []
    head = trainer.model.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda _m, inp, _o: head_rows.append(int(inp[0].reshape(-1, inp[0].size(-1)).size(0))))

    def grads(loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
        trainer.model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return float(loss), {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                             if p.requires_grad}

    lean_loss, lean = grads(lambda: trainer.compute_loss(wrapped, dict(batch), num_items_in_batch=total))
    lean_rows = head_rows[:]
    head_rows.clear()
    # The reference: the model's full forward and HF's own loss (Trainer.compute_loss), through the same wrapper.
    full_loss, full = grads(lambda: Trainer.compute_loss(trainer, wrapped, dict(batch), num_items_in_batch=total))
    full_rows = head_rows[:]
    # Synced gradients are the same on every rank although the batches differ.
    gathered = [None] * state.num_processes
    torch.distributed.all_gather_object(gathered, {n: g for n, g in lean.items()})
    if rank == 0:
        other = gathered[1]
        out.write_text(json.dumps({
            "wrapped_in_ddp": isinstance(wrapped, DistributedDataParallel),
            "scored": int(scored), "padded_positions": int(batch["labels"].numel()),
            "lean_head_rows": lean_rows, "full_head_rows": full_rows,
            "lean_loss": lean_loss, "full_loss": full_loss,
            "max_grad_diff": max(float((lean[n] - full[n]).abs().max()) for n in lean),
            "max_grad": max(float(full[n].abs().max()) for n in full),
            "max_rank_diff": max(float((lean[n] - other[n]).abs().max()) for n in lean),
            "grads": len(lean)}))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
