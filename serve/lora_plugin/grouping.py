"""Which rows of a batch belong to which adapter slot, computed once per forward pass.

vLLM hands the punica wrapper one slot index per token (``-1`` = base model, no LoRA). Every
LoRA layer of the forward pass needs the same split, so the wrapper builds an `AdapterGroups`
when the batch mapping changes and every op reuses it instead of re-deriving it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A run of at least this many tokens of one adapter (a prompt in prefill) is used as a slice:
# a view, so neither a gather of the inputs nor a scatter of the outputs. Shorter runs (decode
# steps are one token per request) are pooled per adapter into one index tensor instead, so the
# matmul count stays one per adapter rather than one per request.
MIN_SEGMENT_ROWS = 8

Rows = slice | torch.Tensor
"""Rows of the batch: a contiguous `slice`, or a 1-D int64 tensor of row numbers."""


@dataclass(frozen=True)
class RowGroup:
    """Rows that share one adapter slot and are processed with a single matmul."""

    slot: int
    rows: Rows


@dataclass(frozen=True)
class AdapterGroups:
    """The batch split by adapter slot; base-model rows (index -1) are in no group."""

    num_rows: int
    groups: tuple[RowGroup, ...]
    base_rows: Rows | None
    """Rows that must receive no LoRA delta at all; None when every row has an adapter."""

    @property
    def empty(self) -> bool:
        """True when no row uses an adapter (a pure base-model batch)."""
        return not self.groups


NO_ROWS = AdapterGroups(num_rows=0, groups=(), base_rows=None)


def group_rows(indices: torch.Tensor) -> AdapterGroups:
    """Split per-row slot indices into per-slot row groups, skipping -1 (and any negative index).

    Long contiguous runs become slices; the remaining rows of a slot are pooled into one index
    tensor. Groups come out ordered by slot, then by position, so results are deterministic.
    """
    indices = indices.reshape(-1)
    if indices.numel() == 0:
        return NO_ROWS
    values, counts = torch.unique_consecutive(indices.cpu(), return_counts=True)
    segments: dict[int, list[slice]] = {}
    base: list[slice] = []
    start = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        run = slice(start, start + count)
        (base if value < 0 else segments.setdefault(value, [])).append(run)
        start += count
    groups: list[RowGroup] = []
    for slot in sorted(segments):
        groups.extend(_slot_groups(slot, segments[slot], indices.device))
    return AdapterGroups(num_rows=start, groups=tuple(groups), base_rows=_merge(base, indices.device))


def _slot_groups(slot: int, runs: list[slice], device: torch.device) -> list[RowGroup]:
    """Long runs as their own slice groups, short runs of the same slot pooled into one group."""
    if len(runs) == 1:
        return [RowGroup(slot, runs[0])]
    long_runs = [run for run in runs if run.stop - run.start >= MIN_SEGMENT_ROWS]
    short_runs = [run for run in runs if run.stop - run.start < MIN_SEGMENT_ROWS]
    groups = [RowGroup(slot, run) for run in long_runs]
    pooled = _merge(short_runs, device)
    if pooled is not None:
        groups.append(RowGroup(slot, pooled))
    return groups


def _merge(runs: list[slice], device: torch.device) -> Rows | None:
    """One `Rows` for several runs: the slice itself if there is one run, else an index tensor."""
    if not runs:
        return None
    if len(runs) == 1:
        return runs[0]
    rows = [row for run in runs for row in range(run.start, run.stop)]
    return torch.tensor(rows, dtype=torch.long, device=device)
