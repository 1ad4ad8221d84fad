"""How a batch's token -> slot indices are split into per-adapter row groups."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lorafleet.serve.lora_plugin.grouping import MIN_SEGMENT_ROWS, group_rows  # noqa: E402


def rows_of(rows) -> list[int]:
    return list(range(rows.start, rows.stop)) if isinstance(rows, slice) else rows.tolist()


def covered(groups) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for group in groups.groups:
        out.setdefault(group.slot, []).extend(rows_of(group.rows))
    return {slot: sorted(rows) for slot, rows in out.items()}


def test_every_adapter_row_in_exactly_one_group_and_base_rows_in_none():
    idx = [0, -1, 1, 0, 3, -1, 3, 3, 2]
    groups = group_rows(torch.tensor(idx))
    assert covered(groups) == {0: [0, 3], 1: [2], 2: [8], 3: [4, 6, 7]}
    assert rows_of(groups.base_rows) == [1, 5]
    assert groups.num_rows == len(idx)


def test_decode_batch_pools_each_adapter_into_one_matmul():
    """32 decode tokens over 4 adapters: 4 groups (one matmul each), not 32."""
    idx = [i % 4 for i in range(32)]
    groups = group_rows(torch.tensor(idx))
    assert len(groups.groups) == 4
    assert groups.base_rows is None


def test_long_prefill_runs_stay_contiguous_slices():
    """Two prompts of the same adapter apart in the batch: two zero-copy slices, no gather."""
    n = MIN_SEGMENT_ROWS
    idx = [1] * n + [-1] * 3 + [1] * (n + 2) + [2, 1, 2, 1]  # the last two 1-rows are short runs
    groups = group_rows(torch.tensor(idx))
    slices = [g.rows for g in groups.groups if g.slot == 1 and isinstance(g.rows, slice)]
    assert slices == [slice(0, n), slice(n + 3, 2 * n + 5)]
    pooled = [g.rows for g in groups.groups if g.slot == 1 and not isinstance(g.rows, slice)]
    assert [rows.tolist() for rows in pooled] == [[2 * n + 6, 2 * n + 8]]
    assert groups.base_rows == slice(n, n + 3)


def test_all_base_batch_has_no_groups():
    groups = group_rows(torch.tensor([-1, -1, -1]))
    assert groups.empty and groups.base_rows == slice(0, 3)


def test_empty_batch():
    assert group_rows(torch.tensor([], dtype=torch.long)).empty
