"""`--gradient-checkpointing`: off unless asked (TRL's SFTConfig would turn it on by default),
reaches the model when asked, still trains the LoRA weights, and is recorded on the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.train.config import TrainConfig
from lorafleet.train.recipe import build_trainer
from lorafleet.train.tracking import Tracker

from lorafleet.registry import Registry
from tests.unit.train.helpers import intent, run_cli, write_jsonl


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(4)]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def two_steps(config: TrainConfig, run_dir: Path) -> tuple[object, dict[str, object], dict[str, object]]:
    """Build the recipe's trainer on the tiny model, run 2 steps; (trainer, LoRA B before, after)."""
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model
    from rich.console import Console

    tokenizer = load_tokenizer(config.base)
    examples, _ = prepare(config.train, None)
    base = load_base(config.base, qlora=False, gradient_checkpointing=config.gradient_checkpointing)
    model = get_peft_model(base, lora_config(config))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer, _ = build_trainer(config, model, tokenizer, examples, [], run_dir, Tracker(None),
                               Console(quiet=True), False)
    trainer.train()
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    return trainer, before, after


def test_flag_reaches_model_and_lora_still_trains(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    config = TrainConfig(name="ckpt", train=train_file, base=tiny_model, rank=8, max_steps=2, batch_size=2,
                         gradient_checkpointing=True, track=False)
    trainer, before, after = two_steps(config, tmp_path / "run")
    assert trainer.state.global_step == 2
    assert trainer.args.gradient_checkpointing is True
    assert trainer.model.get_base_model().is_gradient_checkpointing
    # LoRA B starts at zero: it moves only if gradients flowed through the checkpointed layers.
    assert before and all(not after[n].equal(before[n]) for n in before)


def test_default_is_off_though_trl_defaults_on(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    config = TrainConfig(name="plain", train=train_file, base=tiny_model, rank=8, max_steps=2, batch_size=2,
                         track=False)
    trainer, before, after = two_steps(config, tmp_path / "run")
    assert trainer.args.gradient_checkpointing is False
    assert not trainer.model.get_base_model().is_gradient_checkpointing
    assert all(not after[n].equal(before[n]) for n in before)


def test_load_base_enables_checkpointing_only_when_asked(tiny_model: Path) -> None:
    from lorafleet.train.model import load_base

    assert load_base(tiny_model, qlora=False, gradient_checkpointing=True).is_gradient_checkpointing
    assert not load_base(tiny_model, qlora=False).is_gradient_checkpointing


def test_cli_flag_lands_in_card_hyperparameters(capsys, tiny_model: Path, train_file: Path,
                                                tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tiny_model),
                             "--train", str(train_file), "--name", "ckpt-cli", "--rank", "8", "--max-steps", "2",
                             "--batch-size", "2", "--samples", "0", "--no-track", "--gradient-checkpointing",
                             "--skip-fidelity", "--json")
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    card = Registry(data_dir / "registry").resolve("ckpt-cli").card
    assert card.training["gradient_checkpointing"] is True


def test_yaml_field_and_default_in_hyperparameters(tmp_path: Path, train_file: Path) -> None:
    from lorafleet.train.config import load_config

    path = tmp_path / "ckpt.yaml"
    path.write_text(f"name: y\ntrain: {train_file}\ngradient_checkpointing: true\n", encoding="utf-8")
    assert load_config(path).hyperparameters()["gradient_checkpointing"] is True
    assert TrainConfig(name="d", train=train_file).hyperparameters()["gradient_checkpointing"] is False
