"""`adapters import` records the base variant the adapter is checked and served on (card.trained_on), as
`train` does: the full base with its weights' sha256, or an nf4 twin (its manifest says so) with the twin's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.base_variants import variant_of
from lorafleet.config import DEFAULT_BASE_NAME
from lorafleet.fsutil import sha256_file
from lorafleet.registry import Registry
from tests.unit.core.peft_files import write_fake_peft, write_safetensors
from tests.unit.core.test_cli import run

SHAPES = {"model.layers.0.self_attn.q_proj.weight": (16, 16), "model.layers.0.self_attn.v_proj.weight": (16, 16)}


def write_base(folder: Path) -> Path:
    """A base folder as `check_servable` reads it: config.json and the weights' safetensors header."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                    "_name_or_path": "tiny-llama"}))
    write_safetensors(folder / "model.safetensors", SHAPES)
    return folder


def write_twin(folder: Path, base: Path) -> Path:
    """An nf4 twin of `base` as `base prepare --variant nf4` leaves it (manifest: variant nf4, derived_from)."""
    write_base(folder)
    (folder / "manifest.json").write_text(json.dumps({
        "model_id": "tiny-llama", "variant": "nf4", "weights_sha256": sha256_file(folder / "model.safetensors"),
        "derived_from": {"path": str(base.resolve()), "weights_sha256": sha256_file(base / "model.safetensors")},
        "parameters": 512, "dtype": "float32", "architecture": "LlamaForCausalLM",
        "created_at": "2026-01-01T00:00:00Z"}))
    return folder


def import_card(capsys: pytest.CaptureFixture[str], data: Path, peft: Path, *flags: str):  # noqa: ANN201
    code, out, err = run(capsys, "--data-dir", str(data), "adapters", "import", str(peft), "--name", "intents",
                         "--skip-fidelity", "--json", *flags)
    assert code == 0, err
    return Registry(data / "registry").card("intents", json.loads(out)["version"])


def test_import_on_a_full_base_records_it_with_its_sha256(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    base = write_base(tmp_path / "base")
    card = import_card(capsys, tmp_path / "data", write_fake_peft(tmp_path / "peft"), "--base", str(base))
    assert card.trained_on is not None
    assert (card.trained_on.variant, card.trained_on.path) == ("full", str(base.resolve()))
    assert card.trained_on.weights_sha256 == sha256_file(base / "model.safetensors") == card.base.weights_sha256
    assert card.lora.quantization is None and variant_of(card) == "full"


def test_repro_import_on_an_nf4_twin_records_the_twin_and_its_base(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    """An adapter trained on the nf4 twin (QLoRA as served) was registered without trained_on: served on the
    full-precision base, it answers differently from how it was trained."""
    base = write_base(tmp_path / "base")
    twin = write_twin(tmp_path / "twin", base)
    card = import_card(capsys, tmp_path / "data", write_fake_peft(tmp_path / "peft"), "--base", str(twin))
    assert card.trained_on is not None
    assert (card.trained_on.variant, card.trained_on.path) == ("nf4", str(twin.resolve()))
    assert card.trained_on.weights_sha256 == sha256_file(twin / "model.safetensors")
    # the card's base is the full-precision one the twin was made from, as `train --qlora` records it
    assert (card.base.path, card.base.weights_sha256) == (str(base.resolve()), sha256_file(base / "model.safetensors"))
    assert card.lora.quantization == "nf4" and variant_of(card) == "nf4"
    code, out, _ = run(capsys, "--data-dir", str(tmp_path / "data"), "adapters", "show", "intents@v1")
    assert code == 0 and "trained on: nf4" in " ".join(out.split())


def test_repro_an_adapter_config_naming_a_local_twin_wins_over_the_configured_base(capsys, tmp_path) -> None:  # noqa: ANN001
    """Without --base the configured (full) base was picked first, though the adapter names the twin it was
    trained on."""
    data = tmp_path / "data"
    base = write_base(data / "base" / DEFAULT_BASE_NAME)  # the embedded base is the configured one
    twin = write_twin(data / "base" / f"{DEFAULT_BASE_NAME}-nf4", base)
    peft = write_fake_peft(tmp_path / "peft", config={"base_model_name_or_path": str(twin)})
    card = import_card(capsys, data, peft)
    assert card.trained_on is not None
    assert (card.trained_on.variant, card.trained_on.path) == ("nf4", str(twin.resolve()))
    plain = write_fake_peft(tmp_path / "plain", config={"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"})
    card = import_card(capsys, data, plain)  # a hub id: checked and served on the configured base
    assert card.trained_on is not None
    assert (card.trained_on.variant, card.trained_on.path) == ("full", str(base.resolve()))


def test_import_without_any_local_base_records_no_variant(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    card = import_card(capsys, tmp_path / "data", write_fake_peft(tmp_path / "peft"))  # "tiny": not a folder
    assert card.trained_on is None and variant_of(card) == "full"
