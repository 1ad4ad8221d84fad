"""Evidence-gated promotion: policy, evidence checks, decision records and canary state (issue 16)."""

from lorafleet.promotion.actions import (
    Outcome,
    PromotionRefused,
    finish,
    promote,
    what_is_left,
)
from lorafleet.promotion.canary_state import CanaryState, active_canaries, record_progress
from lorafleet.promotion.decisions import Check, Decision, count_decisions, who_am_i

# The gateway imports `from lorafleet.promotion.rollback import rollback, record_probe_warning`.
__all__ = ["CanaryState", "Check", "Decision", "Outcome", "PromotionRefused", "active_canaries", "count_decisions",
           "finish", "promote", "record_progress", "what_is_left", "who_am_i"]
