"""The GPU path of training with the CUDA checks faked (no GPU here): bf16 where the GPU has it, fp32 on
CPU as before; the QLoRA compute dtype, the as-served check and the fidelity reference follow it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lorafleet.train import precision
from lorafleet.train.config import TrainConfig
from lorafleet.train.recipe import build_trainer, train
from lorafleet.train.tracking import Tracker

from lorafleet.config import Settings
from lorafleet.errors import ConfigError
from tests.unit.train.helpers import intent, run_cli, write_jsonl


def fake_gpu(monkeypatch: pytest.MonkeyPatch, *, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [intent(f"where is parcel {i}?", "shipping") for i in range(4)])


def test_auto_is_bf16_on_a_gpu_that_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch)
    assert precision.use_bf16("auto") and precision.use_bf16("bf16")
    assert not precision.use_bf16("fp32")
    assert precision.device() == "cuda"


def test_auto_is_fp32_on_a_gpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpu(monkeypatch, bf16=False)
    assert not precision.use_bf16("auto")


def fake_cpu_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_bf16_on_a_cpu_with_native_bf16_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu_bf16(monkeypatch, native=True)
    assert precision.use_bf16("bf16") and not precision.use_bf16("auto") and not precision.use_bf16("fp32")


def test_cpu_stays_fp32_and_refuses_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu_bf16(monkeypatch, native=False)
    assert not precision.use_bf16("auto")
    assert precision.device() == "cpu"
    with pytest.raises(ConfigError, match="--precision bf16"):
        precision.use_bf16("bf16")


def test_load_base_dtype_follows_bf16(tiny_model: Path) -> None:
    from lorafleet.train.model import load_base

    assert next(load_base(tiny_model, qlora=False).parameters()).dtype == torch.float32
    assert next(load_base(tiny_model, qlora=False, bf16=True).parameters()).dtype == torch.bfloat16


def test_qlora_compute_dtype_follows_bf16_weights_read_alike() -> None:
    from lorafleet.base_variants import nf4_config

    assert nf4_config().bnb_4bit_compute_dtype == torch.float32  # the twin's load, and CPU training
    assert nf4_config("bfloat16").bnb_4bit_compute_dtype == torch.bfloat16


def test_trainer_args_bf16_only_when_asked(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model
    from rich.console import Console

    config = TrainConfig(name="p", train=train_file, rank=8, base=tiny_model)
    train_ex, _ = prepare(config.train, None)
    model = get_peft_model(load_base(tiny_model, qlora=False), lora_config(config))
    for bf16 in (False, True):
        trainer, _ = build_trainer(config, model, load_tokenizer(tiny_model), train_ex, [], tmp_path / f"r{bf16}",
                                   Tracker(None), Console(quiet=True), False, bf16=bf16)
        assert trainer.args.bf16 is bf16 and trainer.args.fp16 is False


def test_recipe_loads_bf16_on_a_faked_gpu(monkeypatch: pytest.MonkeyPatch, tiny_model: Path, train_file: Path,
                                          tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def stop(base: Path, **kwargs: object) -> None:
        seen.update(kwargs)
        raise RuntimeError("stop after the load call")

    monkeypatch.setattr("lorafleet.train.recipe.load_base", stop)
    config = TrainConfig(name="p", train=train_file, rank=8, base=tiny_model, track=False)
    for gpu, expected in ((True, True), (False, False)):
        if gpu:
            fake_gpu(monkeypatch)
        else:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(RuntimeError, match="stop after"):
            train(config, Settings(data_dir=tmp_path / f"d{gpu}"), show_progress=False)
        assert seen["bf16"] is expected


def test_cli_precision_bf16_on_cpu_is_a_clear_error(capsys: pytest.CaptureFixture[str], tiny_model: Path,
                                                    train_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu_bf16(monkeypatch, native=False)
    code, _, err = run_cli(capsys, "--data-dir", str(tmp_path / "d"), "train", "--train", str(train_file),
                           "--name", "p", "--base", str(tiny_model), "--precision", "bf16", "--no-track")
    assert code != 0
    assert "--precision bf16" in err and "Traceback" not in err


def test_precision_and_serving_check_are_not_hyperparameters(train_file: Path) -> None:
    hp = TrainConfig(name="p", train=train_file, precision="fp32", serving_check=False).hyperparameters()
    assert "precision" not in hp and "serving_check" not in hp


def test_serving_model_bf16(tiny_model: Path, tiny_adapter: Path) -> None:
    from lorafleet.train.efficacy import serving_model

    assert next(serving_model(tiny_model, tiny_adapter).parameters()).dtype == torch.float32
    assert next(serving_model(tiny_model, tiny_adapter, bf16=True).parameters()).dtype == torch.bfloat16


def test_fidelity_reference_in_bf16_on_a_faked_gpu(monkeypatch: pytest.MonkeyPatch, tiny_model: Path,
                                                   tiny_adapter: Path) -> None:
    from lorafleet.train import fidelity
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained
    dtypes: list[object] = []

    def spy(*args: object, **kwargs: object) -> object:
        dtypes.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    seqs = [([1, 2, 3], [4, 5])]
    cpu = fidelity.reference_logprobs(tiny_model, tiny_adapter, seqs)
    # Faked one level up: with torch.cuda faked, PEFT's loader would pin memory on a GPU that is not there.
    monkeypatch.setattr(precision, "bf16_available", lambda: True)
    monkeypatch.setattr(precision, "device", lambda: "cpu")
    gpu = fidelity.reference_logprobs(tiny_model, tiny_adapter, seqs)
    assert dtypes == [torch.float32, torch.bfloat16]
    assert len(gpu[0][0]) == len(cpu[0][0]) == 2
