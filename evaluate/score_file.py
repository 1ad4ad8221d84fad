"""`eval score`: metrics with CIs for a JSONL of stored predictions, no model involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.evaluate.metrics import FAMILY_OF, compute_metrics, families_for
from lorafleet.evaluate.scoring import extract_label, raw_label
from lorafleet.evaluate.stats import bootstrap_ci
from lorafleet.evaluate.suite import Extraction
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import iter_jsonl


class Prediction(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    prediction: str
    reference: str | None = None
    references: list[str] | None = None
    label: str | None = None

    @model_validator(mode="after")
    def _has_reference(self) -> Prediction:
        if self.reference is None and not self.references:
            raise ValueError("give 'reference' or 'references'")
        return self

    def refs(self) -> list[str]:
        return list(self.references) if self.references else [self.reference or ""]


class FileScore(BaseModel):
    metric: str
    value: float
    ci: tuple[float, float]
    config: dict[str, Any]
    details: dict[str, Any] = Field(default_factory=dict)


def read_predictions(path: Path) -> list[Prediction]:
    rows = []
    for line, obj in iter_jsonl(path):
        try:
            rows.append(Prediction.model_validate(obj))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            raise FormatError(err["msg"].removeprefix("Value error, "), path=str(path), line=line,
                              field=field) from None
    if not rows:
        raise ConfigError(f"{path}: no predictions", hint="the file is empty")
    return rows


def score_file(path: Path, metrics: list[str], *, label_pattern: str | None = None, labels: list[str] | None = None,
               resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> list[FileScore]:
    """Corpus figures with bootstrap CIs for the requested metric names (or families)."""
    check_metric_names(metrics)
    return score_predictions(read_predictions(path), metrics, label_pattern=label_pattern, labels=labels,
                             resamples=resamples, seed=seed, confidence=confidence)


def check_metric_names(metrics: list[str]) -> None:
    """Known names only, and none that needs the model itself."""
    unknown = [m for m in metrics if m not in FAMILY_OF]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}", hint=f"known: {', '.join(sorted(FAMILY_OF))}")
    if "perplexity" in metrics:
        raise ConfigError("perplexity needs the model's logprobs, not stored predictions",
                          hint="put it in a suite and use `eval run`")


def score_predictions(rows: list[Prediction], metrics: list[str], *, options: dict[str, dict[str, Any]] | None = None,
                      label_pattern: str | None = None, labels: list[str] | None = None, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> list[FileScore]:
    """`score_file` on rows in memory (the HF `evaluate` modules use it); options as in a suite's metrics."""
    check_metric_names(metrics)
    families = families_for(metrics, options)
    refs = [r.refs() for r in rows]
    gold = pred = None
    if "classification" in families:
        extraction = Extraction(label_pattern=label_pattern, labels=labels or [])
        if not extraction.labels:
            extraction.labels = sorted({r.label if r.label is not None else raw_label(r.refs()[0], extraction)
                                        for r in rows} - {""})
        gold = [r.label if r.label is not None else extract_label(r.refs()[0], extraction) for r in rows]
        pred = [extract_label(r.prediction, extraction) for r in rows]
        labels = extraction.labels
    results = compute_metrics(families, [r.prediction for r in rows], refs, gold_labels=gold, pred_labels=pred,
                              labels=labels)
    wanted = {n for n in results if n in metrics or FAMILY_OF[n] in metrics}
    out = []
    for name in sorted(wanted):
        m = results[name]
        ci = bootstrap_ci(m.stats, m.aggregate, resamples=resamples, seed=seed, confidence=confidence)
        out.append(FileScore(metric=name, value=m.value, ci=(ci.low, ci.high), config=m.config, details=m.details))
    return out
