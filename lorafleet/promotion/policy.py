"""The promotion policy of one adapter name: what evidence a version needs before an alias moves to it.

    <registry>/<name>/policy.yaml   (absent: DEFAULT_POLICY below)

Validated with pydantic; an unknown key or a wrong type is a ConfigError naming file:line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet.errors import ConfigError
from lorafleet.fsutil import atomic_write_text
from lorafleet.promotion.canary_state import CanaryThresholds, CanaryWindow
from lorafleet.registry import Registry
from lorafleet.yaml_lines import line_of, parse_with_lines

POLICY_FILE = "policy.yaml"

DEFAULT_POLICY = """\
# lorafleet's default promotion policy: used for every adapter name without its own policy.yaml.
# Set one with `lorafleet adapters policy NAME --set FILE`; see it with `lorafleet adapters policy NAME`.
suites:
  required: []          # suite names that must have a run at this exact version whose gates passed;
  min_suites: 1         # [] = every suite the version was evaluated on counts, and at least min_suites of them
paired_gain:            # vs the version the target alias names now (when there is one and it differs)
  required: true
  metric: null          # null: each suite's first metric
  min_delta: 0.0        # the gain's lower confidence bound must exceed this
  confidence: 0.95
  min_pairs: 20         # fewer shared samples than this: no evidence
fidelity: true          # card.fidelity passed (served by the engine = HF + PEFT); skipped or missing refuses
forgetting: true        # card.forgetting passed its non-inferiority gate; skipped or missing refuses
review: null            # e.g. {min_graded: 20, min_mean: 3.0, min_alpha: 0.6, criteria: [accuracy]}
no_probe_warning: true  # a gateway's after-load probe found it answering exactly like the base: refuse
canary:
  min_seconds: 600
  min_samples: 50
  required_signals: [error_rate]
  thresholds: {error_rate_excess: 0.05, invalid_rate_excess: 0.10, probe_warnings: 0, review_mean_drop: 0.5}
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SuitesRule(_Strict):
    required: list[str] = Field(default_factory=list)
    min_suites: int = Field(default=1, ge=0)


class PairedGainRule(_Strict):
    required: bool = True
    metric: str | None = None
    min_delta: float = 0.0
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_pairs: int = Field(default=20, ge=2)
    resamples: int = Field(default=2000, ge=100)


class ReviewRule(_Strict):
    min_graded: int = Field(default=20, ge=0, description="Grades per criterion.")
    min_mean: float | None = None
    min_alpha: float | None = Field(default=None, le=1)
    criteria: list[str] | None = Field(default=None, description="None: every criterion on the card.")


class CanaryRule(_Strict):
    min_seconds: float = Field(default=600, ge=0)
    min_samples: int = Field(default=50, ge=1)
    required_signals: list[Literal["error_rate", "probe_warnings", "invalid_rate", "review"]] = Field(
        default_factory=lambda: ["error_rate"])
    thresholds: CanaryThresholds = Field(default_factory=CanaryThresholds)

    def window(self) -> CanaryWindow:
        return CanaryWindow(min_seconds=self.min_seconds, min_samples=self.min_samples,
                            required_signals=list(self.required_signals))


class Policy(_Strict):
    """What a version must show, at that exact version, before an alias moves to it."""

    suites: SuitesRule = Field(default_factory=SuitesRule)
    paired_gain: PairedGainRule | None = Field(default_factory=PairedGainRule)
    fidelity: bool = True
    forgetting: bool = True
    review: ReviewRule | None = None
    no_probe_warning: bool = True
    canary: CanaryRule = Field(default_factory=CanaryRule)


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str  # the file, or "default"
    sha256: str
    text: str


def parse_policy(text: str, where: str) -> Policy:
    """Validate a policy document; errors name where:line and the field."""
    data, lines = parse_with_lines(text, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: a policy is a mapping of rules", hint="see `lorafleet adapters policy NAME`")
    try:
        # strict types from YAML: ints are accepted where floats are wanted
        return Policy.model_validate(_floats(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = line_of(lines, loc)
        field = ".".join(str(p) for p in loc) or "(root)"
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{where}:{line or 1}: {field}: {what}",
                          hint="see the default with `lorafleet adapters policy NAME --default`") from None


def _floats(data: object) -> object:
    """Strict mode would refuse `min_delta: 0` for a float; turn ints of float fields into floats."""
    float_keys = {"min_delta", "confidence", "min_mean", "min_alpha", "min_seconds", "error_rate_excess",
                  "invalid_rate_excess", "review_mean_drop"}
    if isinstance(data, dict):
        return {k: (float(v) if k in float_keys and type(v) is int else _floats(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_floats(v) for v in data]
    return data


def policy_path(registry: Registry, name: str) -> Path:
    return registry.root / name / POLICY_FILE


def load_policy(registry: Registry, name: str) -> LoadedPolicy:
    """The policy in force for `name`: its policy.yaml, else the default."""
    path = policy_path(registry, name)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        return LoadedPolicy(parse_policy(text, str(path)), str(path), _sha(text), text)
    return LoadedPolicy(parse_policy(DEFAULT_POLICY, "default policy"), "default", _sha(DEFAULT_POLICY),
                        DEFAULT_POLICY)


def set_policy(registry: Registry, name: str, source: Path) -> LoadedPolicy:
    """Validate `source` and store it as `name`'s policy (nothing is written when it is invalid)."""
    registry.versions(name)  # an unknown adapter is a NotFoundError, not a stray folder
    source = Path(source)
    if not source.is_file():
        raise ConfigError(f"{source}: no such file", hint="give a policy YAML file")
    text = source.read_text(encoding="utf-8")
    policy = parse_policy(text, str(source))
    with registry.lock(name):
        atomic_write_text(policy_path(registry, name), text)
    return LoadedPolicy(policy, str(policy_path(registry, name)), _sha(text), text)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
