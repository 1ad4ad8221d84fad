"""`card.json`: everything known about one adapter version, as a pydantic model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BaseModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Base model identifier, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")
    path: str | None = Field(default=None, description="Local folder it was trained against.")
    weights_sha256: str | None = Field(default=None, description="sha256 of the base weights file.")


class TrainedOn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: str = Field(description="full (the base as it is) or nf4 (its dequantised-nf4 twin, for QLoRA).")
    path: str | None = Field(default=None, description="The folder of that variant.")
    weights_sha256: str | None = Field(default=None, description="sha256 of that variant's weights.")


class DatasetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    split: str = Field(description="train, val, test or other.")
    records: int | None = None


class LoraInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int
    alpha: float
    target_modules: list[str]
    dropout: float | None = None
    quantization: str | None = Field(default=None, description="e.g. nf4 for QLoRA.")


class AdapterCard(BaseModel):
    """Links an adapter version to its base, data, training config, metrics, evals and reviews."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    name: str
    version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: Literal["trained", "imported"] = "trained"
    base: BaseModelRef
    lora: LoraInfo
    trained_on: TrainedOn | None = Field(
        default=None, description="The base variant the adapter was trained against, and so must be served on.")
    files: dict[str, str] = Field(default_factory=dict, description="file name → sha256")
    dataset: list[DatasetFile] = Field(default_factory=list)
    training: dict[str, Any] = Field(default_factory=dict, description="Every hyperparameter used.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    eval_runs: list[dict[str, Any]] = Field(default_factory=list)
    review: dict[str, Any] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)
    held_out: dict[str, Any] = Field(
        default_factory=dict,
        description="The held-out guard's check of the training data at train time: index_version (which "
                    "index was checked), matches (how many training records matched a held-out example), "
                    "allowed (--allow-held-out was given), threshold (near-duplicate Jaccard), found (the first "
                    "matches, one line each). "
                    "Empty for imported adapters and versions trained before the guard.")
    fidelity: dict[str, Any] = Field(
        default_factory=dict,
        description="The fidelity check at registration (lorafleet.fidelity.Fidelity): the adapter as the serving "
                    "engine runs it vs HF + PEFT on the same base and probes: token_agreement, max/mean "
                    "|Δ logprob|, prompts, tokens, engine_dtype, tolerance, passed, forced (--force), seconds; "
                    "or {skipped: reason}. Empty on versions registered before the check.")
    mlflow_run_id: str | None = None
    notes: str | None = None
    forgetting: dict[str, Any] = Field(
        default_factory=dict,
        description="The off-domain forgetting check (examples/forgetting): agreement with the base's own greedy "
                    "answers (rougeL, exact_match) and the drop against the base's noise floor with paired CIs, "
                    "perplexity on the base's answers, the max_drop gate, n, suite, run and engine. Written by "
                    "`train` (a time-boxed subset) and by `eval run` of a forgetting suite; empty if never measured.")

    decisions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Promotion decisions about this version, oldest first (lorafleet.promotion.decisions.Decision): "
                    "promoted, refused, rolled_back, finished — when, who, alias, percent, the checks and the evidence "
                    "ids they read, and the policy's sha256.")

    @property
    def served_name(self) -> str:
        """The immutable name an engine serves this version under."""
        return f"{self.name}@{self.version}"


def latest_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest of a card's (non-empty list of) eval run entries by created_at; on a tie the one appended
    later wins.

    created_at has one-second resolution on older cards, and two runs of one suite often finish in the
    same second; max() alone would then pick the earlier run."""
    return max(enumerate(runs), key=lambda pair: (str(pair[1].get("created_at") or ""), pair[0]))[1]


# Fields that may change after a version is created: what we learn about it later.
MUTABLE_CARD_FIELDS = frozenset({"metrics", "eval_runs", "review", "notes", "forgetting", "decisions"})
