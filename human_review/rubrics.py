"""Rubrics live in core (lorafleet.rubrics) so an eval judge reads the same YAML; re-exported here."""

from __future__ import annotations

from lorafleet.rubrics import PAIRWISE, Criterion, Rubric, load_rubric

__all__ = ["PAIRWISE", "Criterion", "Rubric", "load_rubric"]
