"""`lorafleet train` under a real launcher: `torchrun --nproc_per_node 2` on CPU (gloo). Both processes
train (DDP), only the main one saves, tracks and registers: one version, one MLflow run, one report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet.serve.vllm_child import free_port

from lorafleet.registry import Registry
from tests.unit.train.helpers import REPO, intent, write_jsonl


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_two_processes_register_one_version(tiny_model: Path, tmp_path: Path, qlora: bool) -> None:
    rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(8)]
    rows += [intent(f"please refund order {i}", "refund") for i in range(8)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", [intent("my order has not arrived", "shipping"),
                                               intent("refund my lamp", "refund"),
                                               intent("where is my box", "shipping")])
    data_dir = tmp_path / "data"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "lorafleet", "--data-dir", str(data_dir), "train", "--base", str(tiny_model), "--train", str(train),
           "--val", str(val), "--name", "ddp-intents", "--rank", "8", "--max-steps", "2", "--eval-steps", "1",
           "--batch-size", "2", "--samples", "1", "--skip-fidelity", "--json", *(["--qlora"] if qlora else [])]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads(proc.stdout)  # one JSON document: the second process printed nothing
    assert result["version"] == "v1" and result["steps"] == 2 and result["processes"] == 2  # a real gloo group
    assert result["val_loss"] is not None and result["base_val_loss"] is not None
    if qlora:
        assert result["serving_val_loss"] is not None
    # One run folder, decided by the main process and shared: both processes wrote to it.
    [run_dir] = [p for p in (data_dir / "runs" / "ddp-intents").iterdir() if p.is_dir()]
    assert result["run_dir"] == str(run_dir) and (run_dir / "checkpoints").is_dir()
    assert (data_dir / "runs" / "ddp-intents" / "latest").read_text().strip() == run_dir.name
    registry = Registry(data_dir / "registry")
    assert registry.versions("ddp-intents") == ["v1"]
    card = registry.resolve("ddp-intents").card
    assert card.mlflow_run_id == result["mlflow_run_id"] and card.training["processes"] == 2
    # QLoRA: the main process wrote the base's nf4 twin (once) and the card names it; served there.
    twin = data_dir / "base" / f"{tiny_model.resolve().name}-nf4"
    expected = ("nf4", str(twin.resolve())) if qlora else ("full", str(tiny_model.resolve()))
    assert (card.trained_on.variant, card.trained_on.path) == expected
    if qlora:
        assert card.trained_on.weights_sha256 == json.loads((twin / "manifest.json").read_text())["weights_sha256"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lorafleet-train")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]
