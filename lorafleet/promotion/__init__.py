"""Evidence-gated promotion: policy, evidence checks, decision records and canary state (issue 16)."""

from lorafleet.promotion.actions import (
    Outcome,
    PromotionRefused,
    finish,
    promote,
    record_probe_warning,
    rollback,
    what_is_left,
)
from lorafleet.promotion.canary_state import CanaryState, active_canaries, record_progress
from lorafleet.promotion.decisions import Check, Decision, count_decisions, who_am_i

__all__ = ["CanaryState", "Check", "Decision", "Outcome", "PromotionRefused", "active_canaries", "count_decisions",
           "finish", "promote", "record_probe_warning", "record_progress", "rollback", "what_is_left", "who_am_i"]
