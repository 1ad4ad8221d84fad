"""Grouped LoRA ops for vLLM's CPU punica wrapper: one matmul per adapter, nothing for base rows.

vLLM's stock torch ops (`vllm/lora/ops/torch_ops/lora_ops.py`) gather a full copy of the
adapter weights for every token (`weights[indices]`) and index the stacked slots with -1 for
base-model tokens, which Python indexing turns into *the last slot*: with every slot busy, base
requests batched with adapter requests get another tenant's weights. These ops take the batch
already split by `grouping.group_rows` and never touch rows outside a group.

All products are computed in float32 and rounded once to the output's dtype. The stock ops run
the expand in the layer's dtype; on CPUs without native bfloat16 a skinny bf16 matmul such as
(32 x 16) @ (16 x 1536) is ~80x slower than in float32 (measured: 4.8 ms vs 0.06 ms), and one
rounding is also more accurate than two.
"""

from __future__ import annotations

import torch

from .grouping import AdapterGroups, Rows
from .stacked import FusedWeights


def take_rows(x: torch.Tensor, rows: Rows) -> torch.Tensor:
    """The rows of `x` (a view for a slice, a gathered copy for an index tensor)."""
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def add_rows(y: torch.Tensor, rows: Rows, delta: torch.Tensor) -> None:
    """y[rows] += delta, in place (y may be a column view of a larger tensor)."""
    if isinstance(rows, slice):
        y[rows] += delta
    else:
        y.index_add_(0, rows, delta)


def put_rows(y: torch.Tensor, rows: Rows, value: torch.Tensor) -> None:
    """y[rows] = value, in place."""
    if isinstance(rows, slice):
        y[rows] = value
    else:
        y.index_copy_(0, rows, value)


def zero_rows(y: torch.Tensor, rows: Rows) -> None:
    """y[rows] = 0, in place."""
    if isinstance(rows, slice):
        y[rows] = 0
    else:
        y.index_fill_(0, rows, 0)


def slot_weight(stacked: torch.Tensor, slot: int) -> torch.Tensor:
    """One adapter's (out, in) matrix from vLLM's stacked (slots, [1,] out, in) tensor, no copy."""
    weight = stacked[slot]
    return weight.reshape(weight.shape[-2], weight.shape[-1])


def grouped_shrink(y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, groups: AdapterGroups,
                   scale: float) -> None:
    """y[:, :rank] = scale * x @ A_slot.T per row; base rows get exactly 0.

    Like vLLM's shrink this overwrites (the caller's buffer may hold an earlier layer's values),
    so base rows are zeroed rather than skipped.
    """
    rank = lora_a.shape[-2]
    out = y[:, :rank]
    for group in groups.groups:
        a = slot_weight(lora_a, group.slot).float()
        put_rows(out, group.rows, (scale * (take_rows(x, group.rows).float() @ a.T)).to(y.dtype))
    if groups.base_rows is not None:
        zero_rows(out, groups.base_rows)


def grouped_expand(y: torch.Tensor, x: torch.Tensor, lora_b: torch.Tensor, groups: AdapterGroups,
                   offset: int, size: int | None, add_inputs: bool) -> None:
    """y[:, offset:offset+size] (+)= x @ B_slot.T per row; base rows get no delta.

    `size=None` is vLLM's plain expand: as many columns as both B and y have (the adapter and
    the model may pad the output differently). With `add_inputs=False` the columns are
    overwritten, so base rows are set to 0 there.
    """
    if size is None:
        size = min(lora_b.shape[-2], y.shape[1] - offset)
    cols = y[:, offset:offset + size]
    for group in groups.groups:
        b = slot_weight(lora_b, group.slot)[:size].float()
        delta = (take_rows(x, group.rows).float() @ b.T).to(y.dtype)
        (add_rows if add_inputs else put_rows)(cols, group.rows, delta)
    if not add_inputs and groups.base_rows is not None:
        zero_rows(cols, groups.base_rows)


def grouped_lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: tuple[torch.Tensor, ...],
                        lora_b: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...],
                        groups: AdapterGroups, offset_start: int = 0) -> None:
    """y[:, slices] += (scale * x @ A_s.T) @ B_s.T per adapter and output slice, in place.

    Fuses vLLM's shrink + expand: each adapter's input rows are gathered once for all slices
    (q/k/v or gate/up share them) and its output rows scattered once, with no (tokens x rank)
    buffer for the whole batch. Base rows are never read or written.
    """
    width = sum(output_slices)
    cols = y[:, offset_start:offset_start + width]
    for group in groups.groups:
        xs = take_rows(x, group.rows).float()
        deltas = []
        for a_all, b_all, size in zip(lora_a, lora_b, output_slices, strict=True):
            h = (xs @ slot_weight(a_all, group.slot).float().T) * scale
            deltas.append(h @ slot_weight(b_all, group.slot)[:size].float().T)
        delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=1)
        add_rows(cols, group.rows, delta.to(y.dtype))


KERNEL_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
"""dtype -> the compiled kernel's dtype code (lora_kernel.c)."""


class KernelError(RuntimeError):
    """The compiled kernel refused its inputs (a slot index out of range) or ran out of memory."""


def cached_lora_linear(y: torch.Tensor, x: torch.Tensor, weights: FusedWeights, scale: float,
                       groups: AdapterGroups, offset_start: int = 0) -> None:
    """`grouped_lora_linear` on restacked weights: one shrink matmul per adapter for all slices.

    The pure-torch path, used where the compiled kernel is not available.
    """
    cols = y[:, offset_start:offset_start + weights.width]
    rank = weights.rank
    for group in groups.groups:
        h = take_rows(x, group.rows).float() @ weights.slot_a(group.slot).float().T
        if scale != 1.0:
            h *= scale
        deltas = [h[:, j * rank:(j + 1) * rank] @ weights.slot_bt(group.slot, j).float()
                  for j in range(len(weights.outs))]
        delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=1)
        add_rows(cols, group.rows, delta.to(y.dtype))


def kernel_accepts(y: torch.Tensor, x: torch.Tensor, rows: int) -> bool:
    """Whether the compiled kernel can take these tensors as they are (else use the torch path)."""
    return (x.dtype in KERNEL_DTYPES and y.dtype in KERNEL_DTYPES and x.shape[0] >= rows and y.shape[0] >= rows
            and x.stride(1) == 1 and y.stride(1) == 1 and x.device.type == "cpu" and y.device.type == "cpu")


def fused_lora_linear(kernel, y: torch.Tensor, x: torch.Tensor, weights: FusedWeights, scale: float,
                      slots: torch.Tensor, offset_start: int = 0, threads: int = 1) -> None:
    """y[:, slices] += (scale * x @ A_s.T) @ B_s.T for every row with slot s >= 0, in one compiled call.

    `slots` is vLLM's int64 token -> slot table for the first `len(slots)` rows; rows with -1
    are not read or written. `threads` > 1 spreads tiles of rows over torch's OpenMP threads. The
    caller has checked `kernel_accepts`.
    """
    if x.shape[1] != weights.in_features or offset_start + weights.width > y.shape[1]:
        raise KernelError(f"LoRA shapes disagree: x {tuple(x.shape)}, y {tuple(y.shape)}, A in "
                          f"{weights.in_features}, width {weights.width} at {offset_start}")
    status = kernel(x.data_ptr(), KERNEL_DTYPES[x.dtype], x.stride(0), y.data_ptr(), KERNEL_DTYPES[y.dtype],
                    y.stride(0), offset_start, slots.data_ptr(), slots.shape[0], weights.a.data_ptr(),
                    weights.bt.data_ptr(), KERNEL_DTYPES[weights.a.dtype], weights.slots, weights.in_features,
                    weights.rank, len(weights.outs), weights.outs_array.data_ptr(), scale, threads)
    if status != 0:
        raise KernelError(f"lora kernel failed with status {status} (-1: slot index >= {weights.slots}, "
                          "-2: out of memory)")
