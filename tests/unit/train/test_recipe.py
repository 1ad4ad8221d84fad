"""The recipe on the tiny model: label mask, a full CLI run with its card and MLflow run,
a failed save that registers nothing, and --resume finishing it."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from lorafleet.train.config import TrainConfig
from lorafleet.train.recipe import build_trainer, final_val_loss, train
from lorafleet.train.tracking import Tracker

from lorafleet.adapter_files import inspect_peft_dir, servability_problems
from lorafleet.config import Settings
from lorafleet.errors import RegistryError
from lorafleet.fsutil import sha256_file
from lorafleet.registry import Registry
from tests.unit.train.helpers import intent, run_cli, write_jsonl

ANSWER = "[Intent: shipping] I am checking the delivery status."


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    train_rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(6)]
    train_rows = [{**r, "messages": [r["messages"][0], {"role": "assistant", "content": ANSWER}]} for r in train_rows]
    val_rows = [intent("my order has not arrived", "shipping"), intent("refund my lamp", "refund")]
    return write_jsonl(tmp_path / "train.jsonl", train_rows), write_jsonl(tmp_path / "val.jsonl", val_rows)


def test_prompt_tokens_carry_label_minus_100(tiny_model: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model
    from rich.console import Console

    config = TrainConfig(name="mask", train=data[0], rank=8, base=tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    train_ex, _ = prepare(config.train, None)
    model = get_peft_model(load_base(tiny_model, qlora=False), lora_config(config))
    trainer, _ = build_trainer(config, model, tokenizer, train_ex, [], tmp_path / "run", Tracker(None),
                               Console(quiet=True), False)
    batch = next(iter(trainer.get_train_dataloader()))
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        trained = [i for i, lab in zip(ids, labels, strict=True) if lab != -100]
        first = labels.index(next(lab for lab in labels if lab != -100))
        assert all(lab == -100 for lab in labels[:first])  # system + user + "<|im_start|>assistant\n"
        assert tokenizer.decode(trained).startswith(ANSWER)
        assert "where is my parcel" in tokenizer.decode(ids[:first])
        assert "where is my parcel" not in tokenizer.decode(trained)


def test_final_val_loss_is_the_reloaded_best_checkpoints_without_a_second_pass(
        tiny_model: Path, data: tuple[Path, Path], tmp_path: Path) -> None:
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model
    from rich.console import Console

    config = TrainConfig(name="t", train=data[0], val=data[1], base=tiny_model, rank=8, max_steps=3,
                         eval_steps=1, batch_size=2, lr=5e-3, track=False)
    train_ex, val_ex = prepare(config.train, config.val)
    model = get_peft_model(load_base(tiny_model, qlora=False), lora_config(config))
    trainer, _ = build_trainer(config, model, load_tokenizer(tiny_model), train_ex, val_ex, tmp_path / "run",
                               Tracker(None), Console(quiet=True), False)
    trainer.train()
    evaluations = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evaluations) == 3
    kept = final_val_loss(trainer)
    assert kept == min(evaluations)
    assert kept == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-5)  # the weights really are the best's


def test_single_process_training_takes_the_lean_loss_path(tiny_model: Path, data: tuple[Path, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lorafleet.train.trainer as lean
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model
    from rich.console import Console

    calls = []
    real = lean.scored_positions_loss
    monkeypatch.setattr(lean, "scored_positions_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = TrainConfig(name="t", train=data[0], base=tiny_model, rank=8, max_steps=2, batch_size=2, track=False)
    train_ex, _ = prepare(config.train, None)
    model = get_peft_model(load_base(tiny_model, qlora=False), lora_config(config))
    trainer, _ = build_trainer(config, model, load_tokenizer(tiny_model), train_ex, [], tmp_path / "run",
                               Tracker(None), Console(quiet=True), False)
    trainer.train()
    assert len(calls) == 2  # one per step: no fallback to the full-vocabulary forward


def test_cli_train_registers_servable_version_with_full_card(capsys, tiny_model: Path, data: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tiny_model),
                             "--train", str(data[0]), "--val", str(data[1]), "--name", "tiny-intents",
                             "--rank", "8", "--max-steps", "2", "--eval-steps", "1", "--batch-size", "2",
                             "--samples", "1", "--skip-fidelity", "--json")
    assert code == 0, err
    result = json.loads(out)  # stdout holds only the JSON (no trainer log lines)
    assert result["version"] == "v1" and result["steps"] == 2 and result["base_val_loss"] is not None
    assert result["processes"] == 1
    assert len(result["samples"]) == 1 and set(result["samples"][0]) == {"prompt", "reference", "base", "adapter"}
    resolved = Registry(data_dir / "registry").resolve("tiny-intents")
    card = resolved.card
    assert card.lora.rank == 8 and card.lora.alpha == 16 and card.lora.quantization is None
    assert card.lora.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert card.base.weights_sha256 and card.base.path == str(tiny_model.resolve())
    assert card.trained_on.model_dump() == {"variant": "full", "path": card.base.path,
                                            "weights_sha256": card.base.weights_sha256}
    assert {d.split: d.sha256 for d in card.dataset} == {"train": sha256_file(data[0]), "val": sha256_file(data[1])}
    assert card.training["lr"] == 2e-4 and card.training["max_steps"] == 2 and card.training["rank"] == 8
    for key in ("train_loss", "val_loss", "best_step", "wall_time_s", "peak_rss_mb", "base_val_loss"):
        assert card.metrics[key] not in (None, {}), key
    assert card.metrics["val_loss"]["points"] and card.library_versions["peft"]
    assert servability_problems(inspect_peft_dir(resolved.path), max_lora_rank=16) == []
    from lorafleet.heldout import HeldOutIndex

    # The guard checked the data (clean) against the index, which now holds this run's val file.
    assert card.held_out == {"index_version": HeldOutIndex(data_dir).version(), "matches": 0, "allowed": False,
                             "threshold": 0.8, "found": []}
    assert Path(result["run_dir"]).parent == data_dir / "runs" / "tiny-intents"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(card.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["rank"] == "8"
    assert len(client.get_metric_history(card.mlflow_run_id, "eval_loss")) >= 2
    assert any(a.path == "adapter" for a in client.list_artifacts(card.mlflow_run_id))


def test_failed_save_registers_nothing_then_resume_finishes(tiny_model: Path, data: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    config = TrainConfig(name="crashy", train=data[0], val=data[1], base=tiny_model, rank=8, max_steps=2,
                         eval_steps=2, batch_size=2, samples=0, track=False)

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RegistryError, match="No space left on device.*nothing was registered"):
        train(config, settings, show_progress=False, fail_before_rename=disk_full)
    adapter_dir = settings.registry_dir / "crashy"
    assert not any(p.name.startswith("v") for p in adapter_dir.iterdir()) if adapter_dir.exists() else True
    assert not list(adapter_dir.glob(".tmp-*")) if adapter_dir.exists() else True
    run_id = (settings.data_dir / "runs" / "crashy" / "latest").read_text().strip()
    assert (settings.data_dir / "runs" / "crashy" / run_id / "checkpoints" / "checkpoint-2").is_dir()

    resumed = train(config.model_copy(update={"resume": True}), settings, show_progress=False)
    # It continued from checkpoint-2 (transformers 5 may run one more step on resuming at max_steps).
    assert resumed.version == "v1" and resumed.steps >= 2
    assert Registry(settings.registry_dir).versions("crashy") == ["v1"]
