"""Training settings: core Settings plus where MLflow tracks (read from the environment only here)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from lorafleet.config import Settings


class TrainSettings(Settings):
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("mlflow_tracking_uri", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking server (MLFLOW_TRACKING_URI, MLflow's own variable); "
                    "unset: the local SQLite store under data_dir/mlflow.")

    @classmethod
    def from_core(cls, core: Settings) -> TrainSettings:
        """Core settings as built by the CLI (flags applied) plus this part's own fields from the environment."""
        return cls(**core.model_dump())


def tracking_uri(settings: Settings) -> str | None:
    """The tracking server to use, or None for the local store."""
    uri = settings.mlflow_tracking_uri if isinstance(settings, TrainSettings) else None
    return uri or None  # MLFLOW_TRACKING_URI= (set but empty) means no server
