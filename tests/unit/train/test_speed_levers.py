"""The recipe's speed levers (train.config: padding_free, group_by_length, packing, threads, dataloader_workers):
what reaches TRL's SFTConfig, and that padding-free batches score the very same tokens with no attention across
examples (the same loss and gradients as padded batches)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lorafleet.train.config import TrainConfig, load_config
from lorafleet.train.recipe import build_trainer, setup_compute, speed_args
from lorafleet.train.tracking import Tracker
from rich.console import Console

from lorafleet.errors import ConfigError
from tests.unit.train.helpers import intent, write_jsonl


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    rows = [intent(f"where is parcel {i}{' please' * i}?", "shipping") for i in range(6)]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_speed_args_reach_sftconfig(train_file: Path) -> None:
    plain = speed_args(TrainConfig(name="s", train=train_file, padding_free=False))
    assert plain["padding_free"] is False and plain["max_length"] == 256
    assert plain["train_sampling_strategy"] == "random" and plain["dataloader_num_workers"] == 0
    free = speed_args(TrainConfig(name="s", train=train_file, padding_free=True, group_by_length=True,
                                  dataloader_workers=1))
    # Over-long examples were dropped before TRL (on_overlong drop): TRL needs max_length None to go padding-free.
    assert free["padding_free"] is True and free["max_length"] is None
    assert free["train_sampling_strategy"] == "group_by_length" and free["dataloader_num_workers"] == 1
    kept_long = speed_args(TrainConfig(name="s", train=train_file, padding_free=True, on_overlong="truncate"))
    assert kept_long["padding_free"] is False and kept_long["max_length"] == 256  # TRL still truncates them
    packed = speed_args(TrainConfig(name="s", train=train_file, packing=True, padding_free=True, max_length=64))
    assert packed["packing"] and packed["packing_strategy"] == "bfd" and packed["max_length"] == 64


def test_bad_lever_values_name_the_yaml_field(tmp_path: Path, train_file: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"name: s\ntrain: {train_file}\nthreads: 0\n")
    with pytest.raises(ConfigError, match="field 'threads'"):
        load_config(cfg)
    cfg.write_text(f"name: s\ntrain: {train_file}\ndataloader_workers: -1\n")
    with pytest.raises(ConfigError, match="field 'dataloader_workers'"):
        load_config(cfg)


def test_threads_and_workers_are_not_hyperparameters(train_file: Path) -> None:
    params = TrainConfig(name="s", train=train_file, threads=2, padding_free=True).hyperparameters()
    assert "threads" not in params and "dataloader_workers" not in params
    assert params["padding_free"] is True  # it changes the numerics a little: on the card


def test_setup_compute_sets_torch_threads(train_file: Path) -> None:
    before = torch.get_num_threads()
    try:
        setup_compute(TrainConfig(name="s", train=train_file, threads=1))
        assert torch.get_num_threads() == 1
        setup_compute(TrainConfig(name="s", train=train_file))  # unset: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _trainer(tiny_model: Path, train_file: Path, tmp_path: Path, padding_free: bool):
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model

    config = TrainConfig(name="s", train=train_file, rank=8, dropout=0.0, max_steps=1, padding_free=padding_free,
                         track=False)
    train_ex, _ = prepare(train_file, None)
    torch.manual_seed(0)
    model = get_peft_model(load_base(tiny_model, qlora=False), lora_config(config))
    trainer, _ = build_trainer(config, model, load_tokenizer(tiny_model), train_ex, [], tmp_path / f"pf{padding_free}",
                               Tracker(None), Console(quiet=True), False)
    return trainer


def test_padding_free_scores_the_same_tokens_as_padded_batches(tiny_model: Path, train_file: Path,
                                                               tmp_path: Path) -> None:
    padded, free = (_trainer(tiny_model, train_file, tmp_path, pf) for pf in (False, True))
    rows = [{k: padded.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(len(padded.train_dataset))]
    a, b = padded.data_collator(rows), free.data_collator(rows)
    assert "attention_mask" in a and "attention_mask" not in b and b["input_ids"].size(0) == 1
    assert int(a["attention_mask"].sum()) == b["input_ids"].size(1)  # no pad token at all
    # The same answer tokens are scored: none across an example boundary.
    assert int((a["labels"][:, 1:] != -100).sum()) == int((b["labels"][:, 1:] != -100).sum())

    results = []
    for trainer, batch in ((padded, a), (free, b)):
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                      if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    # Equal only if attention stays inside each example (a leak would change every later example's loss).
    assert loss_b == pytest.approx(loss_a, rel=1e-4)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-6)


def test_cli_lever_flags_are_validated(capsys: pytest.CaptureFixture[str], train_file: Path, tmp_path: Path) -> None:
    from tests.unit.train.helpers import run_cli

    code, _, err = run_cli(capsys, "--data-dir", str(tmp_path / "d"), "train", "--train", str(train_file),
                           "--name", "s", "--threads", "0", "--padding-free", "--no-track")
    assert code != 0 and "--threads" in err and "Traceback" not in err
