"""Pydantic models at the boundaries: Create/Public for users and queues, grade input, exports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "reviewer"]
Mode = Literal["rubric", "pairwise"]
Choice = Literal["A", "B", "tie", "both_bad"]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    role: Role = "reviewer"
    password: str = Field(min_length=8, max_length=1024)


class UserPublic(BaseModel):
    id: int
    name: str
    role: Role
    disabled: bool = False


class QueueCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    mode: Mode = "rubric"
    overlap: int = Field(default=1, ge=1, le=50, description="Each item is graded by exactly this many reviewers.")
    rubric: dict = Field(default_factory=dict, description="The validated Rubric as a dict.")
    members: list[str] = Field(default_factory=list, description="Reviewer names allowed on the queue.")


class QueuePublic(BaseModel):
    name: str
    mode: Mode
    overlap: int
    rubric: str
    items: int
    grades: int
    needed: int

    @property
    def progress(self) -> float:
        return self.grades / self.needed if self.needed else 1.0


class QueueCreated(QueuePublic):
    token: str = Field(description="Bearer token for POST /api/v1/items into this queue (shown once).")


class GradeIn(BaseModel):
    """What a reviewer submits; validated against the queue's rubric in leases.submit()."""

    model_config = ConfigDict(extra="forbid")

    scores: dict[str, int] = Field(default_factory=dict)
    choice: Choice | None = None
    comment: str | None = Field(default=None, max_length=20_000)
    correction: str | None = Field(default=None, max_length=100_000)


class GradeExport(BaseModel):
    queue: str
    item: str
    reviewer: str
    scores: dict[str, int]
    choice: str | None = None
    comment: str | None = None
    correction: str | None = None
    adapter: str | None = None
    seconds: float | None = None
    time: float
