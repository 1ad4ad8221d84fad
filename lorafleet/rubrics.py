"""Rubrics (core: the review app grades with them, an eval judge answers on them): YAML files of criteria,
each a scale with an anchor text for every level."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lorafleet.errors import ConfigError
from lorafleet.refs import NAME_RE


class Criterion(BaseModel):
    """One thing graded on a scale, e.g. relevance 1–5; every level has an anchor text."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="Key in grades and exports.")
    description: str = ""
    scale: tuple[int, int] = Field(default=(1, 5), description="Lowest and highest level.")
    anchors: dict[int, str] = Field(description="What each level means; one entry per level.")

    @model_validator(mode="after")
    def _anchors_cover_scale(self) -> Criterion:
        low, high = self.scale
        if not 0 <= low < high <= 10:
            raise ValueError(f"scale {list(self.scale)} must be two levels low < high within 0..10")
        missing = [lvl for lvl in range(low, high + 1) if lvl not in self.anchors]
        extra = [lvl for lvl in self.anchors if not low <= lvl <= high]
        if missing or extra:
            raise ValueError(f"anchors must cover levels {low}..{high} exactly (missing {missing}, extra {extra})")
        return self

    @property
    def levels(self) -> list[int]:
        return list(range(self.scale[0], self.scale[1] + 1))


class Rubric(BaseModel):
    """A grading form: criteria, optional comment and corrected-response fields, guidelines."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    guidelines: str = Field(default="", description="Markdown shown beside the form.")
    criteria: list[Criterion] = Field(default_factory=list)
    comment: bool = Field(default=True, description="Offer a free-text comment.")
    correction: bool = Field(default=True, description="Offer a 'corrected response' field.")
    approve_min: int | None = Field(
        default=4, description="A response whose every criterion is ≥ this is exported as approved training data.")

    @model_validator(mode="after")
    def _names_unique(self) -> Rubric:
        names = [c.name for c in self.criteria]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"criterion names must be unique: {dupes}")
        if not NAME_RE.match(self.name):
            raise ValueError(f"rubric name {self.name!r} must match {NAME_RE.pattern}")
        return self


PAIRWISE = Rubric(name="pairwise", guidelines="Pick the better response; judge content, not length.",
                  criteria=[], comment=True, correction=False, approve_min=None)


def load_rubric(path: Path) -> Rubric:
    """Read and validate a rubric YAML; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: rubric file not found", hint="see examples/rubrics/ for the format") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})", hint="fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a rubric is a YAML mapping", hint="see examples/rubrics/general.yaml")
    raw.setdefault("name", path.stem)
    try:
        return Rubric.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top)"
        raise ConfigError(f"{path}: field '{field}': {err['msg']}", hint="see examples/rubrics/general.yaml") from None
