"""The grouped LoRA ops against a per-token reference computation, on random tensors.

Reference (what vLLM's LoRA layers mean): for a token on adapter slot s,
delta = ((x @ A_s.T) * scale) @ B_s.T computed in float32; for a base token (slot -1) the delta is
exactly zero.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from lorafleet.serve.lora_plugin.grouping import MIN_SEGMENT_ROWS, group_rows  # noqa: E402
from lorafleet.serve.lora_plugin.ops import grouped_expand, grouped_lora_linear, grouped_shrink  # noqa: E402

SLOTS, RANK, IN = 4, 16, 48
SCALE = 0.5
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=6e-2, rtol=2e-2)}

# Token -> slot layouts vLLM produces: decode (one token per request, slots interleaved),
# prefill (long runs per prompt, one adapter in two separate prompts), every slot busy with base
# rows in between, only base rows, and only one adapter.
LAYOUTS = {
    "decode_mixed": [0, -1, 1, 2, 3, 0, -1, 3, 2, 1, 1, -1],
    "prefill_runs": [2] * 10 + [-1] * 9 + [0] * 3 + [2] * MIN_SEGMENT_ROWS + [3] * 12 + [0] * 2,
    "all_slots_busy": [3, 3, 0, 1, 2, -1, -1, 3, 0, 0, 1, 2, 2, 2, -1],
    "all_base": [-1] * 7,
    "one_adapter": [1] * 9,
}


def stacked(slots: int, out: int, inner: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """vLLM's stacked LoRA layout: (slots, 1, out, in)."""
    return torch.randn(slots, 1, out, inner, generator=gen).to(dtype)


def reference_shrink(x, a, idx, scale):
    out = torch.zeros(x.shape[0], a.shape[-2], dtype=torch.float32)
    for t, s in enumerate(idx):
        if s >= 0:
            out[t] = (x[t].float() @ a[s, 0].float().T) * scale
    return out


def reference_delta(x, a, b, idx, scale):
    """Per-token x @ A_s @ B_s in float32, zero rows for -1."""
    out = torch.zeros(x.shape[0], b.shape[-2])
    for t, s in enumerate(idx):
        if s >= 0:
            out[t] = ((x[t].float() @ a[s, 0].float().T) * scale) @ b[s, 0].float().T
    return out


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_shrink_matches_reference_and_zeroes_base_rows(layout, dtype, gen):
    idx = LAYOUTS[layout]
    x = torch.randn(len(idx), IN, generator=gen).to(dtype)
    a = stacked(SLOTS, RANK, IN, dtype, gen)
    # Garbage in the buffer: the shrink overwrites, so base rows must come out exactly 0.
    y = torch.full((len(idx), RANK), 7.0)
    grouped_shrink(y, x, a, group_rows(torch.tensor(idx)), SCALE)
    torch.testing.assert_close(y, reference_shrink(x, a, idx, SCALE), **TOL[torch.float32])
    assert torch.equal(y[torch.tensor(idx) < 0], torch.zeros_like(y[torch.tensor(idx) < 0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_matches_reference(layout, dtype, add_inputs, gen):
    idx = LAYOUTS[layout]
    out_width, offset, size = 40, 8, 24
    h = torch.randn(len(idx), RANK, generator=gen)  # vLLM's float32 shrink buffer
    b = stacked(SLOTS, size, RANK, dtype, gen)
    y0 = torch.randn(len(idx), out_width, generator=gen).to(dtype)
    y = y0.clone()
    grouped_expand(y, h, b, group_rows(torch.tensor(idx)), offset, size, add_inputs)

    delta = torch.zeros(len(idx), size)
    for t, s in enumerate(idx):
        if s >= 0:
            delta[t] = h[t] @ b[s, 0].float().T
    expected = y0.float()
    base = torch.tensor(idx) < 0
    if add_inputs:
        expected[:, offset:offset + size] += delta
    else:
        expected[:, offset:offset + size] = delta
    torch.testing.assert_close(y, expected.to(dtype), **TOL[dtype])
    assert torch.equal(y[:, :offset], y0[:, :offset]) and torch.equal(y[:, offset + size:], y0[:, offset + size:])
    if add_inputs:  # base rows are untouched, bit for bit
        assert torch.equal(y[base], y0[base])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_plain_expand_clips_to_the_narrower_of_adapter_and_output(layout, gen):
    """vLLM's expand without a slice writes min(B rows, y columns) columns (padded vocab)."""
    idx = LAYOUTS[layout]
    h = torch.randn(len(idx), RANK, generator=gen)
    b = stacked(SLOTS, 30, RANK, torch.float32, gen)
    y0 = torch.randn(len(idx), 26, generator=gen)
    y = y0.clone()
    grouped_expand(y, h, b, group_rows(torch.tensor(idx)), 0, None, add_inputs=True)
    expected = y0.clone()
    for t, s in enumerate(idx):
        if s >= 0:
            expected[t] += h[t] @ b[s, 0, :26].T
    torch.testing.assert_close(y, expected, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_linear_matches_reference_for_every_output_slice(layout, dtype, gen):
    """q/k/v-style layer: three slices of different widths, written after an offset."""
    idx = LAYOUTS[layout]
    slices = (32, 16, 16)
    x = torch.randn(len(idx), IN, generator=gen).to(dtype)
    a = tuple(stacked(SLOTS, RANK, IN, dtype, gen) for _ in slices)
    b = tuple(stacked(SLOTS, size, RANK, dtype, gen) for size in slices)
    y0 = torch.randn(len(idx), 4 + sum(slices), generator=gen).to(dtype)
    y = y0.clone()
    grouped_lora_linear(y, x, a, b, SCALE, slices, group_rows(torch.tensor(idx)), offset_start=4)

    expected = y0.float()
    col = 4
    for a_s, b_s, size in zip(a, b, slices, strict=True):
        expected[:, col:col + size] += reference_delta(x, a_s, b_s, idx, SCALE)
        col += size
    torch.testing.assert_close(y, expected.to(dtype), **TOL[dtype])
    base = torch.tensor(idx) < 0
    assert torch.equal(y[base], y0[base]) and torch.equal(y[:, :4], y0[:, :4])


def test_stock_vllm_ops_give_base_rows_the_last_slot():
    """The defect this plugin exists for: vLLM's op computes slot -1 as the last slot."""
    from vllm.lora.ops.torch_ops import bgmv_shrink

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, IN, generator=gen)
    a = stacked(SLOTS, RANK, IN, torch.float32, gen)
    stock = torch.zeros(2, RANK)
    bgmv_shrink(x, a, stock, torch.tensor([0, -1]), SCALE)
    assert stock[1].abs().sum() > 0
    torch.testing.assert_close(stock[1], (x[1] @ a[SLOTS - 1, 0].T) * SCALE)
    ours = torch.zeros(2, RANK)
    grouped_shrink(ours, x, a, group_rows(torch.tensor([0, -1])), SCALE)
    assert torch.equal(ours[1], torch.zeros(RANK))
    torch.testing.assert_close(ours[0], stock[0])
