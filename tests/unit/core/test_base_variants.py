"""The nf4 twin of a base (`base prepare --variant nf4`), where adapters are served, and every refusal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lorafleet import base_variants
from lorafleet.base_model import read_manifest, verify_prepared
from lorafleet.base_variants import (
    NF4,
    VLLM_BNB_ARGS,
    prepare_nf4,
    serving_base,
    trained_on,
    twin_dir,
    variant_of,
)
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo, TrainedOn
from lorafleet.errors import BaseModelError
from tests.fixtures import models
from tests.unit.core.test_cli import assert_clean_error, run


@pytest.fixture(scope="module")
def tiny_twin(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("twin") / "tiny-nf4"
    prepare_nf4(tiny_model, out)
    return out


def linear_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(folder / "model.safetensors").items() if "_proj." in k}


def test_the_embedded_twin_holds_what_qlora_trains_with(embedded_base: Path) -> None:
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from lorafleet.train.model import load_base
    from transformers import AutoModelForCausalLM

    twin = models.embedded_nf4_twin_dir()  # prepare_nf4, cached across sessions (re-verified each time)
    manifest = verify_prepared(twin)
    assert manifest.variant == NF4 and manifest.derived_from.path == str(embedded_base.resolve())
    assert manifest.dtype == "float32"  # nf4 code × fp32 absmax is not exact in the base's bfloat16
    # The very model a QLoRA run trains on (load_base(qlora=True)), freshly loaded.
    qlora = load_base(embedded_base, qlora=True)
    expected = {f"{name}.weight": dequantize_4bit(m.weight.data, m.weight.quant_state).float()
                for name, m in qlora.named_modules() if isinstance(m, Linear4bit)}
    written = linear_weights(twin)
    assert len(expected) == 210 and set(expected) == set(written)
    for key, weight in expected.items():
        assert torch.equal(written[key], weight), key
    # And in a forward pass along the training code path (train mode: bitsandbytes' MatMul4Bit).
    plain = AutoModelForCausalLM.from_pretrained(twin, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 7042, 30, 284, 260, 3575, 282]])
    qlora.train()
    with torch.no_grad():
        trained = qlora(input_ids=ids).logits
        assert (plain(input_ids=ids).logits - trained).abs().max() < 1e-3
    # The rounding the twin keeps and the full-precision base lacks: the drift served QLoRA adapters saw.
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (linear_weights(embedded_base)[key] - written[key]).abs().max() > 1e-3


def test_prepare_is_idempotent_and_refuses_another_bases_twin(tiny_model: Path, tiny_twin: Path,
                                                             tmp_path: Path) -> None:
    weights = tiny_twin / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_nf4(tiny_model, tiny_twin).weights_sha256 == read_manifest(tiny_twin).weights_sha256
    assert weights.stat().st_mtime_ns == before
    other = tmp_path / "other-base"
    other.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    with pytest.raises(BaseModelError, match="holds the nf4 twin of another base"):
        prepare_nf4(other, tiny_twin)


def test_a_changed_base_is_not_reused(tiny_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (base / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "twin"
    prepare_nf4(base, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["derived_from"]["weights_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BaseModelError, match="made from other weights"):
        prepare_nf4(base, out)
    assert prepare_nf4(base, out, force=True).derived_from.weights_sha256 != "0" * 64


def test_cli_prepare_and_info_show_the_variant(capsys: pytest.CaptureFixture[str], tiny_model: Path,
                                               tmp_path: Path) -> None:
    dd = tmp_path / "data"
    code, out, err = run(capsys, "--data-dir", str(dd), "base", "prepare", "--variant", "nf4",
                         "--base", str(tiny_model), "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["path"] == str(twin_dir(dd, tiny_model)) and body["variant"] == "nf4" and not body["reused"]
    code, out, err = run(capsys, "--data-dir", str(dd), "base", "info", "--base", str(tiny_model), "--json")
    assert code == 0, err
    assert json.loads(out)["variants"] == [{"variant": "nf4", "path": body["path"],
                                            "weights_sha256": body["weights_sha256"]}]
    code, out, _ = run(capsys, "--data-dir", str(dd), "base", "info", "--base", body["path"])
    assert "nf4" in out and "made from" in out


def test_repro_prequantised_base_is_refused_at_prepare(capsys: pytest.CaptureFixture[str], tiny_model: Path,
                                                      tmp_path: Path) -> None:
    base = tmp_path / "gptq-base"
    base.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (base / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "d"), "base", "prepare", "--variant", "nf4",
                       "--base", str(base))
    assert_clean_error(code, err, "already quantised (gptq", "unquantised base")
    assert not (tmp_path / "d" / "base").exists() or not any((tmp_path / "d" / "base").iterdir())


def test_repro_no_bitsandbytes_is_a_clear_error(capsys: pytest.CaptureFixture[str], tiny_model: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "d"), "base", "prepare", "--variant", "nf4",
                       "--base", str(tiny_model))
    assert_clean_error(code, err, "bitsandbytes cannot be imported", "pip install bitsandbytes")


def test_repro_a_base_without_linear_layers_is_refused() -> None:
    import torch

    with pytest.raises(BaseModelError, match="no Linear layer that bitsandbytes quantised"):
        base_variants.dequantised_state(torch.nn.Sequential(torch.nn.Embedding(4, 4)))


def test_a_failing_quantisation_names_why(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: Path) -> None:
        raise RuntimeError("No supported backend for 4-bit on this device")

    monkeypatch.setattr(base_variants, "load_nf4", broken)
    with pytest.raises(BaseModelError, match="could not quantise it to nf4 .RuntimeError: No supported backend"):
        prepare_nf4(tiny_model, tmp_path / "twin")
    assert not (tmp_path / "twin").exists() and not list(tmp_path.glob(".twin*"))


def test_the_twin_keeps_the_bases_dtype_only_when_exact() -> None:
    import torch

    exact = {"w": torch.tensor([0.5, 1.25, -3.0])}
    assert base_variants.lossless_dtype(exact, torch.bfloat16) is torch.bfloat16
    assert base_variants.lossless_dtype({"w": torch.tensor([0.1])}, torch.bfloat16) is torch.float32


def test_bad_variant_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--data-dir", str(tmp_path), "base", "prepare", "--variant", "int3")
    assert_clean_error(code, err, "--variant 'int3'", "full, nf4")


def card(lora_quant: str | None = None, trained: TrainedOn | None = None) -> AdapterCard:
    return AdapterCard(name="a", version="v1", base=BaseModelRef(id="m"), trained_on=trained,
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"], quantization=lora_quant))


def test_variant_of_cards_old_and_new() -> None:
    assert variant_of(card()) == "full"
    assert variant_of(card("nf4")) == "nf4"  # a QLoRA card from before trained_on
    assert variant_of(card(None, TrainedOn(variant="nf4"))) == "nf4"
    assert variant_of(card("nf4", TrainedOn(variant="full"))) == "full"


def test_serving_base_per_engine(tiny_model: Path, tmp_path: Path) -> None:
    dd = tmp_path / "data"
    nf4 = card("nf4", trained_on(tiny_model, qlora=True, data_dir=dd))
    assert nf4.trained_on.path == str(twin_dir(dd, tiny_model).resolve())
    cpu = serving_base(nf4, base=tiny_model, data_dir=dd, engine="cpu")
    assert (cpu.variant, cpu.path, cpu.vllm_args) == ("nf4", Path(nf4.trained_on.path), [])
    gpu = serving_base(nf4, base=tiny_model, data_dir=dd, engine="gpu")
    assert gpu.path == tiny_model.resolve() and gpu.vllm_args == VLLM_BNB_ARGS and gpu.hf_path == cpu.path
    lora = card(None, trained_on(tiny_model, qlora=False, data_dir=dd))
    assert lora.trained_on.variant == "full"
    assert serving_base(lora, base=tiny_model, data_dir=dd).path == tiny_model.resolve()


def test_serving_base_without_a_twin_says_how_to_make_one(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="no nf4 twin") as info:
        serving_base(card("nf4"), base=tiny_model, data_dir=tmp_path)
    assert "base prepare --variant nf4" in str(info.value)


def test_adapters_show_prints_trained_on(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from lorafleet.registry import Registry
    from tests.unit.core.peft_files import write_fake_peft

    dd = tmp_path / "data"
    registry = Registry(dd / "registry")
    registry.register("q", write_fake_peft(tmp_path / "p1"),
                      card("nf4", TrainedOn(variant="nf4", path="/d/base/b-nf4", weights_sha256="ab" * 32)))
    registry.register("old", write_fake_peft(tmp_path / "p2"), card("nf4"))
    code, out, err = run(capsys, "--data-dir", str(dd), "adapters", "show", "q")
    assert code == 0, err
    assert "trained on: nf4 base /d/base/b-nf4, weights sha256 abababababab…" in out.replace("\n", " ")
    code, out, _ = run(capsys, "--data-dir", str(dd), "adapters", "show", "old")
    assert "trained on: nf4 (from lora.quantization" in out.replace("\n", " ")
