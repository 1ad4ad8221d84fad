"""How `adapters promote` and `adapters policy` print checks and decisions."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lorafleet.promotion.decisions import Check


def print_checks(console: Console, title: str, checks: list[Check]) -> None:
    """One line per piece of evidence: ✓ or ✗, the item, what the card held."""
    console.print(title, highlight=False)
    for c in checks:
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"  {mark} {c.item}: ", end="", highlight=False)
        console.print(c.detail, highlight=False, markup=False, soft_wrap=True)


def decision_line(d: dict[str, Any]) -> str:
    """A decision record as one line of `adapters show` (plain text)."""
    at = str(d.get("at", ""))[:19].replace("T", " ")
    kind = d.get("kind", "?")
    share = d.get("percent")
    where = f"{d.get('alias')}" + (f" at {share:g}%" if isinstance(share, int | float) and share not in (100, 0)
                                   else "")
    extra = []
    if d.get("forced"):
        extra.append("FORCED")
    if d.get("reason"):
        extra.append(f"reason: {d['reason']}")
    failed = [c["item"] for c in d.get("checks", []) if not c.get("ok")]
    if failed and kind == "refused":
        extra.append("failed: " + ", ".join(failed))
    runs = (d.get("evidence") or {}).get("eval_runs") or []
    if runs:
        extra.append("runs " + ", ".join(runs))
    if d.get("policy_sha256"):
        extra.append(f"policy {d['policy_sha256'][:12]}")
    return f"{at}  {kind:<11} {where:<14} by {d.get('who')}" + ("; " + "; ".join(extra) if extra else "")
