"""`GroupedPunicaWrapperCPU`: vLLM's CPU punica wrapper with grouped, isolation-safe LoRA ops.

vLLM builds one punica wrapper per engine; `update_metadata` runs once per forward pass with the
batch's token -> adapter-slot mapping, then every LoRA layer calls the `add_*` methods. The
grouping is therefore computed here, once, and every op reuses it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from . import native
from .grouping import NO_ROWS, AdapterGroups, RowGroup, group_rows
from .ops import (
    cached_lora_linear,
    fused_lora_linear,
    grouped_expand,
    grouped_lora_linear,
    grouped_shrink,
    kernel_accepts,
)
from .stacked import WeightCache, version

QUALNAME = f"{__name__}.GroupedPunicaWrapperCPU"
PARALLEL_MIN_ROWS = 256
"""Batches of at least this many LoRA rows (prefill) run the compiled kernel on all torch threads."""
log = logging.getLogger(__name__)


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """Drop-in for `PunicaWrapperCPU`: same metadata, grouped ops that skip base rows."""

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: torch.device | str,
                 **kwargs: Any) -> None:
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        self.token_groups: AdapterGroups = NO_ROWS
        self.sampler_groups: AdapterGroups = NO_ROWS
        self._lm_head_key: tuple | None = None
        self._lm_head_nonzero = False
        self._warned_prompt_logits = False
        self.kernel = native.default_kernel()
        """The compiled fused op, or None: the pure-torch grouped ops run instead (tests set it)."""
        self.weights = WeightCache(model_dtype=self.kernel is not None)
        self.slot_ids: tuple = ()
        self.token_slots = torch.empty(0, dtype=torch.long)
        self.kernel_threads = 1

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None], max_loras: int,
                        vocab_size: int, **kwargs: Any) -> None:
        """vLLM's metadata, plus the per-slot row groups for tokens and for sampled rows."""
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        self.slot_ids = tuple(lora_index_to_id)
        self.token_slots = self.token_lora_indices.to(torch.long).contiguous()
        self.token_groups = group_rows(self.token_slots)
        # Decode batches stay on one thread: forking the OpenMP team for ~0.1 ms of work per op cost more
        # than it gave (measured: docs/benchmarks.md, Multi-LoRA engine); long prefills use every thread.
        self.kernel_threads = torch.get_num_threads() if self.token_groups.num_rows >= PARALLEL_MIN_ROWS else 1
        self.sampler_groups = group_rows(self.sampler_indices)

    # -- the per-layer entry points ------------------------------------------------------------

    def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                        lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...],
                        *, buffer: tuple[torch.Tensor, ...] | None = None, **kwargs: Any) -> None:
        """Fused shrink + expand of every adapter row, in one compiled call where the kernel is built."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        if self.token_groups.empty:
            return
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        weights = self.weights.get(lora_a_stacked, lora_b_stacked, tuple(output_slices), self.slot_ids)
        if self.kernel is not None and kernel_accepts(y2, x2, self.token_groups.num_rows):
            fused_lora_linear(self.kernel, y2, x2, weights, scale, self.token_slots, threads=self.kernel_threads)
        else:
            cached_lora_linear(y2, x2, weights, scale, self.token_groups)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale: float, *, buffer: torch.Tensor | None = None,
                        **kwargs: Any) -> None:
        """LoRA on the LM head, grouped by the sampled rows' adapters (base rows untouched)."""
        if self.sampler_groups.empty or not self._lm_head_lora_loaded(lora_b_stacked):
            return  # adapters on attention/MLP only (the usual case): the LM-head delta is exactly zero
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        groups = self.sampler_groups
        if x2.shape[0] != groups.num_rows:
            groups = self._prompt_logits_groups(x2.shape[0], lora_b_stacked)
            if groups is None:
                return
        width = min(lora_b_stacked.shape[-2], y2.shape[1])
        grouped_lora_linear(y2, x2, (lora_a_stacked,), (lora_b_stacked,), scale, (width,), groups)

    def _prompt_logits_groups(self, rows: int, lora_b_stacked: torch.Tensor) -> AdapterGroups | None:
        """Groups for logits over rows the sampler mapping does not describe: vLLM's prompt logprobs run
        the LM head over one request's prompt tokens. None (add nothing) when that is exact: no LM-head
        LoRA weights are loaded (the usual case: adapters target attention/MLP), or the batch is base-only."""
        slots = {g.slot for g in self.sampler_groups.groups}
        if len(slots) == 1 and self.sampler_groups.base_rows is None:
            # Every request of the batch uses this one adapter, so these rows do too.
            return AdapterGroups(num_rows=rows, groups=(RowGroup(slots.pop(), slice(0, rows)),), base_rows=None)
        if not self._warned_prompt_logits:
            log.warning("prompt logprobs in a mixed-adapter batch with LM-head LoRA weights: the LM-head "
                        "delta is left out for those rows (the sampler mapping does not say whose they are)")
            self._warned_prompt_logits = True
        return None

    def _lm_head_lora_loaded(self, lora_b_stacked: torch.Tensor) -> bool:
        """Whether any slot holds non-zero LM-head LoRA weights; cached until vLLM writes the tensor."""
        key = (lora_b_stacked.data_ptr(), version(lora_b_stacked), self.slot_ids)
        if self._lm_head_key != key:
            self._lm_head_key, self._lm_head_nonzero = key, bool(torch.count_nonzero(lora_b_stacked))
        return self._lm_head_nonzero

    def apply_lora_full_linear(self, y: torch.Tensor, x: torch.Tensor, weight_stacked: torch.Tensor,
                               bias_stacked: torch.Tensor, module_enabled: torch.Tensor) -> None:
        """Per-adapter full replacement layers (classifier heads), computed per group."""
        adapter_y = torch.zeros((x.size(0), weight_stacked.size(-2)), dtype=torch.float32, device=x.device)
        grouped_shrink(adapter_y, x, weight_stacked, self.sampler_groups, 1.0)
        y.copy_(self._select_full_linear_output(y, adapter_y, bias_stacked, module_enabled))

    # -- the primitive ops that add_shrink / add_expand / add_lora_embedding dispatch to --------

    def _shrink_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        grouped_shrink(y, x, w_t_all, self.token_groups, scale)

    def _shrink_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        grouped_shrink(y, x, w_t_all, self.token_groups, scale)

    def _expand_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        grouped_expand(y, x, w_t_all, self.token_groups, 0, None, add_inputs)

    def _expand_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        grouped_expand(y, x, w_t_all, self.token_groups, 0, None, add_inputs)

    def _expand_slice_prefill(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int,
                              y_slice_size: int, add_inputs: bool) -> None:
        grouped_expand(y, x, w_t_all, self.token_groups, y_offset, y_slice_size, add_inputs)

    def _expand_slice_decode(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int,
                             y_slice_size: int, add_inputs: bool) -> None:
        grouped_expand(y, x, w_t_all, self.token_groups, y_offset, y_slice_size, add_inputs)
