"""The compiled fused LoRA kernel (lora_kernel.c via native.py) and its float32 weight cache.

Reference: for a row on slot s, y[row, slices] += concat_j((scale * x @ A_sj.T) @ B_sj.T) in float32,
rounded once to y's dtype; rows on slot -1 are not touched, bit for bit.
"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from lorafleet.serve.lora_plugin import native  # noqa: E402
from lorafleet.serve.lora_plugin.ops import KernelError, fused_lora_linear  # noqa: E402
from lorafleet.serve.lora_plugin.stacked import WeightCache  # noqa: E402

SLOTS = 4


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory):
    if native.compiler() is None:
        pytest.skip("no C compiler here: the plugin runs its torch ops (tested in test_lora_plugin_wrapper)")
    fn = native.kernel(tmp_path_factory.mktemp("kernels"))
    assert fn is not None
    return fn


def make(gen, dtype, rank, inner, outs):
    a = tuple(torch.randn(SLOTS, 1, rank, inner, generator=gen).to(dtype) for _ in outs)
    b = tuple(torch.randn(SLOTS, 1, out, rank, generator=gen).to(dtype) for out in outs)
    return a, b


def reference(y0, x, a, b, outs, slots, scale, offset):
    y = y0.float()
    for t, s in enumerate(slots):
        if s < 0:
            continue
        col = offset
        for a_j, b_j, out in zip(a, b, outs, strict=True):
            y[t, col:col + out] += ((x[t].float() @ a_j[s, 0].float().T) * scale) @ b_j[s, 0, :out].float().T
            col += out
    return y.to(y0.dtype)


def run(kernel, y, x, a, b, outs, slots, scale=0.5, offset=0, slot_ids=(1, 2, 3, 4), threads=1):
    weights = WeightCache().get(a, b, outs, slot_ids)
    fused_lora_linear(kernel, y, x, weights, scale, torch.tensor(slots, dtype=torch.long), offset, threads)


SHAPES = {  # rank, in, output slices: tails of every loop (4 rows per tile, 4 A rows, 64 columns)
    "qkv": (16, 48, (32, 16, 16)),
    "odd": (3, 50, (70,)),
    "mlp": (8, 64, (130, 130)),
}
LAYOUTS = {
    "decode_mixed": [0, -1, 1, 2, 3, 0, -1, 3, 2, 1, 1, -1],
    "one_slot_9_rows": [2] * 9,
    "single_row": [3],
    "runs_and_base": [1] * 6 + [-1] * 5 + [0] * 7 + [1] * 2,
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_matches_reference_and_leaves_base_rows_and_other_columns_alone(kernel, dtype, shape, layout,
                                                                                threads):
    rank, inner, outs = SHAPES[shape]
    slots = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(0)
    a, b = make(gen, dtype, rank, inner, outs)
    x = torch.randn(len(slots), inner, generator=gen).to(dtype)
    y0 = torch.randn(len(slots), 5 + sum(outs) + 3, generator=gen).to(dtype)
    y = y0.clone()
    run(kernel, y, x, a, b, outs, slots, offset=5, threads=threads)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=2e-2)
    torch.testing.assert_close(y, reference(y0, x, a, b, outs, slots, 0.5, 5), **tol)
    base = torch.tensor(slots) < 0
    assert torch.equal(y[base], y0[base])
    assert torch.equal(y[:, :5], y0[:, :5]) and torch.equal(y[:, 5 + sum(outs):], y0[:, 5 + sum(outs):])


def test_bf16_output_is_rounded_once_to_nearest_even_like_torch(kernel):
    """Integer weights make every product exact in float32, so the only rounding is the final one."""
    gen = torch.Generator().manual_seed(1)
    rank, inner, outs = 4, 8, (64,)
    a = (torch.randint(-2, 3, (SLOTS, 1, rank, inner), generator=gen).to(torch.bfloat16),)
    b = (torch.randint(-2, 3, (SLOTS, 1, outs[0], rank), generator=gen).to(torch.bfloat16),)
    x = torch.randint(-3, 4, (6, inner), generator=gen).to(torch.bfloat16)
    y0 = (torch.randn(6, outs[0], generator=gen) * 300).to(torch.bfloat16)  # bf16 steps of 1-2 there: ties
    y = y0.clone()
    slots = [0, 1, 2, 3, 1, 0]
    run(kernel, y, x, a, b, outs, slots, scale=1.0)
    assert torch.equal(y, reference(y0, x, a, b, outs, slots, 1.0, 0))


def test_a_non_finite_adapter_cannot_reach_another_tenants_rows(kernel):
    """No masking by multiplication: a slot's inf/NaN weights stay in that slot's rows."""
    gen = torch.Generator().manual_seed(2)
    a, b = make(gen, torch.float32, 4, 16, (24,))
    a[0][3] = float("inf")
    b[0][3] = float("nan")
    slots = [0, 3, -1, 1, 3]
    x = torch.randn(len(slots), 16, generator=gen)
    y0 = torch.randn(len(slots), 24, generator=gen)
    y = y0.clone()
    run(kernel, y, x, a, b, (24,), slots)
    assert torch.isfinite(y[[0, 2, 3]]).all() and torch.isnan(y[[1, 4]]).all()
    assert torch.equal(y[2], y0[2])


def test_slot_index_out_of_range_is_refused_before_anything_is_written(kernel):
    gen = torch.Generator().manual_seed(3)
    a, b = make(gen, torch.float32, 4, 16, (24,))
    x = torch.randn(3, 16, generator=gen)
    y0 = torch.randn(3, 24, generator=gen)
    y = y0.clone()
    with pytest.raises(KernelError, match="slot index"):
        run(kernel, y, x, a, b, (24,), [0, SLOTS, 1])
    assert torch.equal(y, y0)


def test_weight_cache_hits_until_a_slot_is_written_or_the_slot_table_changes():
    gen = torch.Generator().manual_seed(4)
    a, b = make(gen, torch.bfloat16, 4, 16, (24, 8))
    cache = WeightCache()
    first = cache.get(a, b, (24, 8), (1, 2, 3, 4))
    assert cache.get(a, b, (24, 8), (1, 2, 3, 4)) is first
    assert first.a.dtype == torch.bfloat16 and first.a.shape == (SLOTS, 8, 16)  # the kernel reads bf16
    assert WeightCache(model_dtype=False).get(a, b, (24, 8), (1, 2, 3, 4)).a.dtype == torch.float32
    assert torch.equal(first.slot_bt(2, 1), b[1][2, 0].T)
    b[1][2, 0].copy_(torch.ones(8, 4))  # an in-place write under the same slot table: every slot again
    assert torch.equal(cache.get(a, b, (24, 8), (1, 2, 3, 4)).slot_bt(2, 1), torch.ones(4, 8))
    # vLLM's set_lora puts a new adapter (a new id) in slot 1: that slot is copied, the others kept.
    a[0][1, 0].copy_(torch.full((4, 16), 2.0))
    a[0][3, 0].copy_(torch.full((4, 16), 3.0))  # not a real vLLM write (id unchanged): shows what is copied
    fresh = cache.get(a, b, (24, 8), (1, 9, 3, 4))
    assert torch.equal(fresh.slot_a(1)[:4], torch.full((4, 16), 2.0))
    assert not torch.equal(fresh.slot_a(3)[:4], torch.full((4, 16), 3.0))
    assert len(cache) == 1
    bigger = tuple(torch.zeros(SLOTS, 1, 4, 16) for _ in range(2)), b  # another tensor: rebuilt whole
    assert torch.equal(cache.get(*bigger, (24, 8), (1, 9, 3, 4)).a, torch.zeros(SLOTS, 8, 16))


def test_without_a_compiler_the_torch_path_is_chosen_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="vllm.plugins.lorafleet_lora"):
        assert native.kernel(tmp_path) is None
    assert "no C compiler" in caplog.text and "pure-torch" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_failed_build_leaves_no_library_behind(tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-DLORAFLEET_TEST_BREAK", "-include", "/nonexistent.h"))
    with pytest.raises(native.KernelBuildError, match="failed"):
        native.build(native.library_path(tmp_path))
    assert not list(tmp_path.iterdir())


def test_built_library_is_keyed_by_source_flags_and_cpu(tmp_path, monkeypatch, kernel):
    path = native.library_path(tmp_path)
    monkeypatch.setattr(native, "cpu_signature", lambda: "x86_64|flags: other")
    assert native.library_path(tmp_path) != path
