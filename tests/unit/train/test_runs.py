"""Training runs keep their history: a folder per run, --resume continues the latest one only when the
config matches (named field by field) and continues its MLflow run; MLflow honours MLFLOW_TRACKING_URI."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from lorafleet.train import runs
from lorafleet.train.config import TrainConfig
from lorafleet.train.recipe import train
from lorafleet.train.settings import TrainSettings, tracking_uri
from lorafleet.train.tracking import Tracker

from lorafleet.config import Settings
from lorafleet.errors import ConfigError, RegistryError
from lorafleet.registry import Registry
from tests.unit.train.helpers import intent, write_jsonl


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(6)]
    val = [intent("my order has not arrived", "shipping"), intent("refund my lamp", "refund")]
    return write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", val)


def run_folders(settings: Settings, name: str) -> list[Path]:
    return sorted(p for p in (settings.data_dir / "runs" / name).iterdir() if p.is_dir())


def test_runs_keep_history_and_resume_continues_the_same_mlflow_run(tiny_model: Path, data: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    settings = Settings(data_dir=tmp_path / "data")
    client = MlflowClient(tracking_uri=f"sqlite:///{settings.data_dir / 'mlflow' / 'mlflow.db'}")
    config = TrainConfig(name="hist", train=data[0], val=data[1], base=tiny_model, rank=8, max_steps=2,
                         eval_steps=2, batch_size=2, samples=0)

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RegistryError):
        train(config, settings, show_progress=False, fail_before_rename=disk_full)
    [first] = run_folders(settings, "hist")
    info = runs.read_info(first)
    assert (settings.data_dir / "runs" / "hist" / "latest").read_text().strip() == first.name == info.run_id
    assert info.mlflow_run_id and client.get_run(info.mlflow_run_id).info.status == "FAILED"

    resumed = train(config.model_copy(update={"resume": True}), settings, show_progress=False)
    assert resumed.run_dir == str(first) and resumed.mlflow_run_id == info.mlflow_run_id  # the same MLflow run
    assert client.get_run(info.mlflow_run_id).info.status == "FINISHED"
    assert Registry(settings.registry_dir).resolve("hist@v1").card.mlflow_run_id == info.mlflow_run_id

    again = train(config, settings, show_progress=False)  # a new run: the earlier folder stays
    assert again.version == "v2" and again.mlflow_run_id != info.mlflow_run_id
    assert [p.name for p in run_folders(settings, "hist")] == sorted([first.name, Path(again.run_dir).name])
    assert (first / "adapter" / "adapter_model.safetensors").is_file() and (first / "checkpoints").is_dir()
    assert (settings.data_dir / "runs" / "hist" / "latest").read_text().strip() == Path(again.run_dir).name


def test_resume_names_every_changed_field_and_changed_data(data: tuple[Path, Path], tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    config = TrainConfig(name="cfg", train=data[0], val=data[1], base=tmp_path / "no-model", rank=8, max_steps=2)
    with pytest.raises(ConfigError, match="no earlier run of 'cfg'") as exc:
        train(config.model_copy(update={"resume": True}), settings, show_progress=False)
    assert exc.value.exit_code == 2 and "without --resume" in str(exc.value)

    runs.create_run(settings.data_dir / "runs", config, runs.new_run_id())
    changed = config.model_copy(update={"resume": True, "lr": 1e-3, "max_steps": 4, "samples": 0})
    with pytest.raises(ConfigError) as exc:
        train(changed, settings, show_progress=False)
    message = str(exc.value)
    assert "lr: run 0.0002, now 0.001" in message and "max_steps: run 2, now 4" in message
    assert "samples" not in message.split("(")[0]  # printing options may differ
    assert "config.json" in exc.value.hint and "drop --resume" in exc.value.hint

    write_jsonl(data[0], [intent(f"where is my box number {i}?", "shipping") for i in range(6)])
    with pytest.raises(ConfigError, match=r"train file .*train.jsonl: content changed since the run started"):
        train(config.model_copy(update={"resume": True}), settings, show_progress=False)


def test_run_ids_sort_by_start_time_and_are_unique() -> None:
    from datetime import UTC, datetime

    early = runs.new_run_id(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert early.startswith("20250102T030405Z-") and early < runs.new_run_id()
    assert len({runs.new_run_id() for _ in range(50)}) == 50


def test_mlflow_tracking_uri_is_read_in_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    core = Settings(data_dir=tmp_path)
    assert tracking_uri(TrainSettings.from_core(core)) is None and tracking_uri(core) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    settings = TrainSettings.from_core(core)
    assert tracking_uri(settings) == "http://mlflow.internal:5000" and settings.data_dir == tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert tracking_uri(TrainSettings.from_core(core)) is None


def test_tracker_uses_the_given_store_and_continues_a_stored_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'server.db'}"
    first = Tracker(tmp_path / "local", run_name="x", uri=uri)
    first.params({"rank": 8})
    first.end("FAILED")
    assert not (tmp_path / "local").exists()  # the server's store, not the local one

    again = Tracker(tmp_path / "local", run_name="x", uri=uri, run_id=first.run_id)
    assert again.run_id == first.run_id and again.note is None
    again.params({"rank": 8, "train": "t.jsonl"})  # params already logged are not re-logged
    again.end()
    run = MlflowClient(tracking_uri=uri).get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"rank": "8", "train": "t.jsonl"}

    lost = Tracker(tmp_path / "local", run_name="x", uri=uri, run_id="0" * 32)
    assert lost.run_id != "0" * 32 and "cannot be continued" in (lost.note or "")
