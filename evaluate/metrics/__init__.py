"""Metric families, one module each; `compute` picks the families a suite asks for."""

from lorafleet.evaluate.metrics.base import MetricResult
from lorafleet.evaluate.metrics.registry import FAMILY_OF, METRIC_NAMES, compute_metrics, families_for

__all__ = ["FAMILY_OF", "METRIC_NAMES", "MetricResult", "compute_metrics", "families_for"]
