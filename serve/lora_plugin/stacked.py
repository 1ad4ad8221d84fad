"""float32 copies of a LoRA layer's stacked adapter weights, in the layout the fused ops read.

vLLM keeps each output slice's weights as (slots, 1, rank, in) for A and (slots, 1, out, rank)
for B, in the model's dtype. Per op, converting them to float32 and walking the slices costs
more than the products on a decode batch, so each layer's weights are restacked once into
    a:  (slots, n_slices * rank, in)  -- one slot's A rows for every slice, contiguous;
    bt: (slots, rank * width)         -- one slot's B^T blocks, (rank, out_j) per slice j,
and rebuilt only when vLLM writes a slot: the key holds the slot -> LoRA id table the wrapper
got in `update_metadata` (vLLM gives every load a new id) and, where torch tracks it, each
stacked tensor's in-place version counter (`set_lora`/`reset_lora` copy into the tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FusedWeights:
    """One LoRA layer's adapters, float32, slot-major (see the module docstring)."""

    key: tuple
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


def version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:
        return None


def weights_key(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], outs: tuple[int, ...],
                slot_ids: tuple) -> tuple:
    return (slot_ids, outs, tuple((t.data_ptr(), version(t)) for t in (*lora_a, *lora_b)))


def fuse(lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], outs: tuple[int, ...],
         key: tuple) -> FusedWeights:
    """Restack one layer's slices (B clipped to each slice's width, as vLLM's expand does)."""
    slots, rank = lora_a[0].shape[0], lora_a[0].shape[-2]
    a = torch.cat([t.reshape(slots, rank, t.shape[-1]) for t in lora_a], dim=1).float().contiguous()
    blocks = [t.reshape(slots, t.shape[-2], rank)[:, :size].transpose(1, 2).float().reshape(slots, rank * size)
              for t, size in zip(lora_b, outs, strict=True)]
    bt = torch.cat(blocks, dim=1).contiguous()
    return FusedWeights(key=key, a=a, bt=bt, rank=rank, outs=outs, outs_array=torch.tensor(outs, dtype=torch.int64))


class WeightCache:
    """`FusedWeights` per LoRA layer (keyed by its first A tensor's address), rebuilt when stale."""

    def __init__(self) -> None:
        self._layers: dict[int, FusedWeights] = {}

    def get(self, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...], outs: tuple[int, ...],
            slot_ids: tuple) -> FusedWeights:
        key = weights_key(lora_a, lora_b, outs, slot_ids)
        layer = lora_a[0].data_ptr()
        cached = self._layers.get(layer)
        if cached is None or cached.key != key:
            cached = self._layers[layer] = fuse(lora_a, lora_b, outs, key)
        return cached

    def __len__(self) -> int:
        return len(self._layers)
