"""Copies of a LoRA layer's stacked adapter weights, in the layout the fused ops read.

vLLM keeps each output slice's weights as (slots, 1, rank, in) for A and (slots, 1, out, rank)
for B, in the model's dtype. Per op, walking the slices (and, on the torch path, converting to
float32) costs more than the products on a decode batch, so each layer's weights are restacked
once (in the model's dtype for the compiled kernel, float32 for the torch path) into
    a:  (slots, n_slices * rank, in)  -- one slot's A rows for every slice, contiguous;
    bt: (slots, rank * width)         -- one slot's B^T blocks, (rank, out_j) per slice j,
and copied again only when vLLM writes a slot: the cache compares the slot -> LoRA id table the
wrapper got in `update_metadata` (vLLM gives every load a new id, and calls `update_metadata`
whenever that table changes) and, where torch tracks it, each stacked tensor's in-place version
counter (`set_lora`/`reset_lora` copy into the tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FusedWeights:
    """One LoRA layer's adapters, slot-major (see the module docstring)."""

    ptrs: tuple[int, ...]
    """Addresses of vLLM's stacked tensors these were copied from: another layout means a rebuild."""
    slot_ids: tuple
    versions: tuple[int | None, ...]
    a: torch.Tensor
    bt: torch.Tensor
    rank: int
    outs: tuple[int, ...]
    outs_array: torch.Tensor
    """`outs` as an int64 tensor, for the compiled kernel."""

    @property
    def slots(self) -> int:
        return self.a.shape[0]

    @property
    def in_features(self) -> int:
        return self.a.shape[2]

    @property
    def width(self) -> int:
        return sum(self.outs)

    def slot_a(self, slot: int) -> torch.Tensor:
        """(n_slices * rank, in): the slot's A rows of every slice."""
        return self.a[slot]

    def slot_bt(self, slot: int, j: int) -> torch.Tensor:
        """(rank, out_j): the slot's B^T for output slice j."""
        start = self.rank * sum(self.outs[:j])
        return self.bt[slot, start:start + self.rank * self.outs[j]].view(self.rank, self.outs[j])

    def copy_slot(self, slot: int, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...]) -> None:
        """Copy (and convert) one slot from vLLM's stacked tensors; B clipped to each slice's width."""
        rank = self.rank
        for j, (a_j, b_j) in enumerate(zip(lora_a, lora_b, strict=True)):
            self.a[slot, j * rank:(j + 1) * rank].copy_(a_j[slot].reshape(rank, a_j.shape[-1]))
            b = b_j[slot].reshape(b_j.shape[-2], rank)[:self.outs[j]]
            self.slot_bt(slot, j).copy_(b.T)


def version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:
        return None


def fuse(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], outs: tuple[int, ...],
         slot_ids: tuple, model_dtype: bool = True) -> FusedWeights:
    """Restack every slot of one layer: in the model's dtype where the kernel reads it (bf16 halves
    the bytes a decode step streams), else float32 (the torch path then needs no conversion per op)."""
    tensors = (*lora_a, *lora_b)
    slots, rank = lora_a[0].shape[0], lora_a[0].shape[-2]
    keep = model_dtype and lora_a[0].dtype in (torch.bfloat16, torch.float32)
    dtype = lora_a[0].dtype if keep else torch.float32
    weights = FusedWeights(ptrs=tuple(t.data_ptr() for t in tensors), slot_ids=slot_ids,
                           versions=tuple(version(t) for t in tensors),
                           a=torch.empty(slots, len(outs) * rank, lora_a[0].shape[-1], dtype=dtype),
                           bt=torch.empty(slots, rank * sum(outs), dtype=dtype), rank=rank, outs=outs,
                           outs_array=torch.tensor(outs, dtype=torch.int64))
    for slot in range(slots):
        weights.copy_slot(slot, lora_a, lora_b)
    return weights


class WeightCache:
    """`FusedWeights` per LoRA layer (keyed by its first A tensor's address), kept fresh.

    When the slot table changes only the slots whose LoRA id changed are copied again (vLLM
    writes a slot only when it puts another adapter there: a new id); when a tensor was written
    in place under an unchanged table, every slot is.
    """

    def __init__(self, model_dtype: bool = True) -> None:
        self.model_dtype = model_dtype
        self._layers: dict[int, FusedWeights] = {}

    def get(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], outs: tuple[int, ...],
            slot_ids: tuple) -> FusedWeights:
        tensors = (*lora_a, *lora_b)
        layer = lora_a[0].data_ptr()
        cached = self._layers.get(layer)
        if cached is None or cached.outs != outs or cached.ptrs != tuple(t.data_ptr() for t in tensors):
            cached = self._layers[layer] = fuse(lora_a, lora_b, outs, slot_ids, self.model_dtype)
            return cached
        versions = tuple(version(t) for t in tensors)
        if cached.slot_ids == slot_ids and cached.versions == versions:
            return cached
        changed = [s for s in range(cached.slots) if cached.slot_ids[s:s + 1] != slot_ids[s:s + 1]]
        for slot in changed or range(cached.slots):
            cached.copy_slot(slot, lora_a, lora_b)
        cached.slot_ids, cached.versions = slot_ids, versions
        return cached

    def __len__(self) -> int:
        return len(self._layers)
