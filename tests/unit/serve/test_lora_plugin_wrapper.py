"""GroupedPunicaWrapperCPU driven the way vLLM drives it: update_metadata, then the layer calls."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from lorafleet.serve.lora_plugin.wrapper import GroupedPunicaWrapperCPU  # noqa: E402
from vllm.lora.layers.utils import LoRAMapping  # noqa: E402
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU  # noqa: E402

SLOTS, RANK, IN = 4, 16, 48
SLICES = (32, 16, 16)
LORA_IDS = [11, 12, 13, 14]  # slot i holds LoRA id LORA_IDS[i]; id 0 = base model
# Three requests: prefill of 6 tokens on slot 2, one base token, 5 tokens on slot 3, decode on 0/1.
TOKENS = [13] * 6 + [0] + [14] * 5 + [11, 12, 0]
PROMPTS = [13, 0, 14, 11, 12, 0]  # one sampled row per request


def wrapper(cls, tokens=TOKENS, prompts=PROMPTS):
    w = cls(max_num_batched_tokens=64, max_batches=8, device="cpu")
    w.update_metadata(LoRAMapping(tokens, prompts, is_prefill=True), LORA_IDS, SLOTS, vocab_size=100)
    return w


def slots(ids):
    return [LORA_IDS.index(i) if i else -1 for i in ids]


def weights(gen, dtype=torch.float32):
    a = tuple(torch.randn(SLOTS, 1, RANK, IN, generator=gen).to(dtype) for _ in SLICES)
    b = tuple(torch.randn(SLOTS, 1, size, RANK, generator=gen).to(dtype) for size in SLICES)
    return a, b


def reference_linear(y0, x, a, b, scale, idx):
    """Per token: y += (x @ A_s.T * scale) @ B_s.T per slice, in float32; base tokens unchanged."""
    y = y0.float()
    for t, s in enumerate(idx):
        if s < 0:
            continue
        col = 0
        for a_s, b_s, size in zip(a, b, SLICES, strict=True):
            h = (x[t].float() @ a_s[s, 0].float().T) * scale
            y[t, col:col + size] += h @ b_s[s, 0].float().T
            col += size
    return y.to(y0.dtype)


def on_path(w: GroupedPunicaWrapperCPU, path: str) -> GroupedPunicaWrapperCPU:
    """The wrapper on the compiled kernel ("kernel", skipped where none builds) or its torch ops."""
    if path == "torch":
        w.kernel = None
    elif w.kernel is None:
        pytest.skip("the compiled LoRA kernel is not available here (no C compiler)")
    return w


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_lora_linear_matches_reference_with_every_slot_busy(dtype, path):
    gen = torch.Generator().manual_seed(0)
    a, b = weights(gen, dtype)
    x = torch.randn(len(TOKENS), IN, generator=gen).to(dtype)
    y0 = torch.randn(len(TOKENS), sum(SLICES), generator=gen).to(dtype)
    y = y0.clone()
    on_path(wrapper(GroupedPunicaWrapperCPU), path).add_lora_linear(y, x, a, b, 0.5, SLICES)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=2e-2)
    torch.testing.assert_close(y, reference_linear(y0, x, a, b, 0.5, slots(TOKENS)), **tol)
    base = torch.tensor(slots(TOKENS)) < 0
    assert torch.equal(y[base], y0[base])


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_repro_new_adapter_in_a_slot_is_used_on_the_next_forward_pass(path):
    """The plugin keeps float32 restacked copies of the slots' weights across forward passes; when vLLM
    copies another adapter into a slot (`set_lora`, in place), the next pass must use the new weights."""
    gen = torch.Generator().manual_seed(8)
    a, b = weights(gen)
    x = torch.randn(len(TOKENS), IN, generator=gen)
    y0 = torch.randn(len(TOKENS), sum(SLICES), generator=gen)
    w = on_path(wrapper(GroupedPunicaWrapperCPU), path)
    w.add_lora_linear(y0.clone(), x, a, b, 0.5, SLICES)
    for a_s, b_s in zip(a, b, strict=True):  # what set_lora does: copy into a view of the stacked tensor
        a_s[2, 0, :RANK // 2].copy_(torch.randn(RANK // 2, IN, generator=gen))
        b_s[2, 0].copy_(torch.randn(b_s.shape[-2], RANK, generator=gen))
    w.update_metadata(LoRAMapping(TOKENS, PROMPTS, is_prefill=False), LORA_IDS, SLOTS, vocab_size=100)
    y = y0.clone()
    w.add_lora_linear(y, x, a, b, 0.5, SLICES)
    torch.testing.assert_close(y, reference_linear(y0, x, a, b, 0.5, slots(TOKENS)), atol=1e-4, rtol=1e-4)


def test_stock_wrapper_leaks_the_last_slot_into_base_tokens():
    """Same batch through vLLM's own wrapper: the base tokens change (the defect)."""
    gen = torch.Generator().manual_seed(0)
    a, b = weights(gen)
    x = torch.randn(len(TOKENS), IN, generator=gen)
    y0 = torch.randn(len(TOKENS), sum(SLICES), generator=gen)
    y = y0.clone()
    wrapper(PunicaWrapperCPU).add_lora_linear(y, x, a, b, 0.5, SLICES)
    base = torch.tensor(slots(TOKENS)) < 0
    assert not torch.allclose(y[base], y0[base])


def test_equals_stock_wrapper_when_no_token_is_base():
    """Where vLLM's ops are right (no -1), ours give the same numbers, through add_shrink/add_expand too."""
    tokens, prompts = [13] * 6 + [14] * 5 + [11, 12], [13, 14, 11, 12]
    gen = torch.Generator().manual_seed(2)
    a, b = weights(gen)
    x = torch.randn(len(tokens), IN, generator=gen)
    y0 = torch.randn(len(tokens), sum(SLICES), generator=gen)
    results = []
    for cls in (PunicaWrapperCPU, GroupedPunicaWrapperCPU):
        w = wrapper(cls, tokens, prompts)
        y = y0.clone()
        w.add_lora_linear(y, x, a, b, 0.5, SLICES)
        buffers = tuple(torch.full((len(tokens), RANK), 3.0) for _ in SLICES)
        w.add_shrink(buffers, x, a, 0.5)
        y2 = y0.clone()
        w.add_expand(y2, buffers, b, SLICES, offset_start=0, add_inputs=True)
        results.append((y, y2))
    for ours, stock in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, stock, atol=1e-4, rtol=1e-4)


def test_logits_use_the_sampled_rows_adapters_and_skip_base():
    gen = torch.Generator().manual_seed(3)
    vocab, padded = 40, 36  # LM-head LoRA may be wider than the (sharded) logits
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, 1, vocab, RANK, generator=gen)
    x = torch.randn(len(PROMPTS), IN, generator=gen)
    y0 = torch.randn(len(PROMPTS), padded, generator=gen)
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU).add_lora_logits(y, x, a, b, 1.0)
    expected = y0.clone()
    for t, s in enumerate(slots(PROMPTS)):
        if s >= 0:
            expected[t] += (x[t] @ a[s, 0].T) @ b[s, 0, :padded].T
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_embedding_expand_skips_base_tokens():
    gen = torch.Generator().manual_seed(4)
    b = torch.randn(SLOTS, 1, 24, RANK, generator=gen)
    x = torch.randn(len(TOKENS), RANK, generator=gen)
    y0 = torch.randn(len(TOKENS), 24, generator=gen)
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU).add_lora_embedding(y, x, b, add_inputs=True)
    expected = y0.clone()
    for t, s in enumerate(slots(TOKENS)):
        if s >= 0:
            expected[t] += x[t] @ b[s, 0].T
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_pure_base_batch_leaves_output_untouched():
    gen = torch.Generator().manual_seed(5)
    a, b = weights(gen)
    tokens = [0] * 5
    x = torch.randn(5, IN, generator=gen)
    y0 = torch.randn(5, sum(SLICES), generator=gen)
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU, tokens, [0]).add_lora_linear(y, x, a, b, 1.0, SLICES)
    assert torch.equal(y, y0)


def test_prompt_logprobs_rows_without_lm_head_lora_are_left_alone():
    """vLLM's prompt logprobs run the LM head over one request's prompt tokens, more rows than the
    sampler mapping describes: the plugin indexed rows that were not there (IndexError: the engine died
    mid eval run) or added sampled rows' deltas to the wrong prompt rows."""
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.zeros(SLOTS, 1, 40, RANK)  # adapters on attention/MLP only: no LM-head LoRA weights
    # Sampled rows 0, 2, 4 on one adapter (pooled into one index tensor), 1 and 3 on the base.
    tokens, prompts = [13] * 3 + [0] * 2 + [13] * 3 + [0] + [13], [13, 0, 13, 0, 13]
    for rows in (2, 23):  # a prompt chunk shorter, and longer, than the 5 sampled rows of the mapping
        x = torch.randn(rows, IN, generator=gen)
        y0 = torch.randn(rows, 36, generator=gen)
        y = y0.clone()
        wrapper(GroupedPunicaWrapperCPU, tokens, prompts).add_lora_logits(y, x, a, b, 1.0)
        assert torch.equal(y, y0)


def test_prompt_logprobs_rows_of_a_single_adapter_batch_get_its_lm_head_delta():
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, 1, 40, RANK, generator=gen)
    x = torch.randn(9, IN, generator=gen)
    y0 = torch.randn(9, 36, generator=gen)
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU, [13] * 9, [13]).add_lora_logits(y, x, a, b, 1.0)
    s = LORA_IDS.index(13)
    torch.testing.assert_close(y, y0 + (x @ a[s, 0].T) @ b[s, 0, :36].T, atol=1e-4, rtol=1e-4)
    # Mixed adapters with LM-head weights: whose rows these are is unknown, so no delta (and no crash).
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU).add_lora_logits(y, x, a, b, 1.0)
    assert torch.equal(y, y0)


def test_logits_without_lm_head_lora_weights_are_left_alone_bit_for_bit():
    """The usual case (adapters on attention/MLP): no LM-head work at all on the sampled rows."""
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.zeros(SLOTS, 1, 40, RANK)
    x = torch.randn(len(PROMPTS), IN, generator=gen)
    y0 = torch.randn(len(PROMPTS), 36, generator=gen)
    y0[0, 0] = -0.0  # adding a zero delta would turn this into +0.0
    y = y0.clone()
    wrapper(GroupedPunicaWrapperCPU).add_lora_logits(y, x, a, b, 1.0)
    assert torch.equal(y, y0) and torch.signbit(y[0, 0])
