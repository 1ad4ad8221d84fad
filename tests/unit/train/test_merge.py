"""`lorafleet adapters merge`: the merged model computes what base + adapter compute."""

from __future__ import annotations

from pathlib import Path

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from tests.unit.train.helpers import run_cli


def test_merge_matches_base_plus_adapter(capsys, tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data_dir = tmp_path / "data"
    card = AdapterCard(name="m", version="v1", base=BaseModelRef(id="tiny", path=str(tiny_model)),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    Registry(data_dir / "registry").register("m", tiny_adapter, card)
    out = tmp_path / "merged"
    code, _, err = run_cli(capsys, "--data-dir", str(data_dir), "adapters", "merge", "m@v1", "--out", str(out))
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    ids = torch.tensor([[1, 42, 99, 7, 300]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tiny_adapter)).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        want, got, plain = peft(ids).logits, merged(ids).logits, base(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert not torch.allclose(plain, got, atol=1e-4)  # the adapter really changed something
    code, _, err = run_cli(capsys, "--data-dir", str(data_dir), "adapters", "merge", "m@v1", "--out", str(out))
    assert code == 2 and "--out" in err and "Traceback" not in err
