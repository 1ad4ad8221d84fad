"""MLflow in the local store (`sqlite:///<data_dir>/mlflow/mlflow.db`), artifacts beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

EXPERIMENT = "lorafleet-train"


class Tracker:
    """A thin MlflowClient wrapper; `Tracker(None)` logs nothing (tracking off)."""

    def __init__(self, root: Path | None, run_name: str = "") -> None:
        self.client: Any = None
        self.run_id: str | None = None
        if root is None:
            return
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "mlflow.store.db.utils", "alembic"):  # their INFO lines drown our progress
            logging.getLogger(name).setLevel(logging.WARNING)

        root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{(root / 'mlflow.db').resolve()}")
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            EXPERIMENT, artifact_location=(root / "artifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        if self.client:
            for key, value in params.items():
                self.client.log_param(self.run_id, key, str(value)[:500])

    def metric(self, key: str, value: float, step: int) -> None:
        if self.client:
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def artifacts(self, folder: Path, path: str) -> None:
        if self.client:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def end(self, status: str = "FINISHED") -> None:
        if self.client:
            self.client.set_terminated(self.run_id, status=status)
