"""MLflow: a tracking server when `MLFLOW_TRACKING_URI` is set (TrainSettings.mlflow_tracking_uri),
else the local store (`sqlite:///<data_dir>/mlflow/mlflow.db`, artifacts beside it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

EXPERIMENT = "lorafleet-train"


def local_uri(root: Path) -> str:
    """The local SQLite store under `root` (data_dir/mlflow)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


class Tracker:
    """A thin MlflowClient wrapper; `Tracker(None)` logs nothing (tracking off).

    `uri` is a tracking server (else the local store under `root`); `run_id` continues that run
    (--resume) instead of creating one; `note` says when the stored run could not be continued."""

    def __init__(self, root: Path | None, run_name: str = "", *, uri: str | None = None,
                 run_id: str | None = None) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.note: str | None = None
        if root is None:
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "mlflow.store.db.utils", "alembic"):  # their INFO lines drown our progress
            logging.getLogger(name).setLevel(logging.WARNING)

        if uri is None:
            root.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri or local_uri(root))
        if run_id is not None:
            try:
                self.client.update_run(self.client.get_run(run_id).info.run_id, status="RUNNING")
                self.run_id = run_id
                return
            except MlflowException as exc:
                self.note = f"MLflow run {run_id} cannot be continued ({exc.error_code}); logging to a new run"
        found = self.client.get_experiment_by_name(EXPERIMENT)
        # A server decides where its artifacts go; the local store keeps them beside the database.
        location = None if uri else (root / "artifacts").resolve().as_uri()
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            EXPERIMENT, artifact_location=location)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        if self.client:
            logged = self.client.get_run(self.run_id).data.params
            for key, value in params.items():
                # MLflow params are write-once: a continued run logs only the ones it lacks.
                if key not in logged:
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
