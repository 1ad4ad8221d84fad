"""A run folder: manifest, samples, outputs, per-sample scores, results and reports.

    <run>/manifest.json   run id, resolved suite, endpoint, target → model, status
    <run>/samples.jsonl   the prompts and references sent
    <run>/outputs.jsonl   one line per (target, sample): output, served model, latency, tokens
    <run>/scores.jsonl    per-sample metric scores (and extracted labels) per target
    <run>/results.json    the scored run (results.RunResults)
    <run>/report.{md,html}
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorafleet.evaluate.client import Completion
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.results import RunResults
from lorafleet.evaluate.targets import RunPlan
from pydantic import BaseModel, Field, ValidationError

from lorafleet.errors import ConfigError
from lorafleet.fsutil import atomic_write_json, atomic_write_jsonl, atomic_write_text


class Manifest(BaseModel):
    run_id: str
    suite: dict[str, Any]
    suite_path: str | None = None
    endpoint: str
    created_at: str
    models: dict[str, str] = Field(default_factory=dict, description="target → name sent as `model`.")
    plan: RunPlan | None = Field(default=None, description="Every target generated: its role, the weighted alias "
                                 "it is a version of, a baseline's few-shot turns and extra body fields.")
    status: str = "partial"


def new_run_id(suite_name: str) -> str:
    """A run id that sorts by time to the millisecond (two runs of a suite often start in the same second)."""
    now = datetime.now(UTC)
    return f"{suite_name}-{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write_manifest(self, manifest: Manifest) -> None:
        atomic_write_json(self.path / "manifest.json", manifest.model_dump(mode="json"))

    def write_samples(self, samples: list[Sample]) -> None:
        atomic_write_jsonl(self.path / "samples.jsonl", [s.model_dump(mode="json") for s in samples])

    def write_outputs(self, outputs: dict[str, dict[str, Completion]]) -> None:
        atomic_write_jsonl(self.path / "outputs.jsonl", [{"target": t, "id": sid, **c.model_dump(mode="json")}
                                                          for t, rows in outputs.items() for sid, c in rows.items()])

    def write_scores(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_jsonl(self.path / "scores.jsonl", rows)

    def write_results(self, results: RunResults) -> None:
        atomic_write_json(self.path / "results.json", results.model_dump(mode="json"))

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    # ---- reading ----------------------------------------------------------------------------

    def _need(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise ConfigError(f"{self.path}: not a run folder (no {name})", hint="pass a folder written by eval run")
        return path

    def manifest(self) -> Manifest:
        try:
            return Manifest.model_validate_json(self._need("manifest.json").read_bytes())
        except ValidationError as exc:
            raise ConfigError(f"{self.path}/manifest.json: invalid ({exc.errors()[0]['msg']})",
                              hint="the run folder is damaged") from None

    def samples(self) -> list[Sample]:
        return [Sample.model_validate_json(line) for line in self._lines("samples.jsonl")]

    def outputs(self) -> dict[str, dict[str, Completion]]:
        out: dict[str, dict[str, Completion]] = {}
        for line in self._lines("outputs.jsonl"):
            row = json.loads(line)
            out.setdefault(row.pop("target"), {})[row.pop("id")] = Completion.model_validate(row)
        return out

    def results(self) -> RunResults:
        return RunResults.model_validate_json(self._need("results.json").read_bytes())

    def scores(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines("scores.jsonl")]

    def _lines(self, name: str) -> list[str]:
        return [ln for ln in self._need(name).read_text(encoding="utf-8").splitlines() if ln.strip()]
