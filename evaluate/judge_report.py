"""The judge in words: provenance, unjudged counts, pairwise flips, agreement with reviewers and trust,
as Markdown lines (report.md, report.html) and plain lines (the eval CLI)."""

from __future__ import annotations

from lorafleet.evaluate.judge_schema import JudgeSummary
from lorafleet.evaluate.results import RunResults

from lorafleet.correlation import Agreement, format_cell


def _agreement_cell(a: Agreement | None) -> str:
    return "–" if a is None else format_cell(a.value, a.ci, a.note)


def judge_lines(results: RunResults) -> list[str]:
    """Plain lines: who judged, how many failed, flips, κ/α per criterion, what is untrusted."""
    j = results.judge
    if j is None:
        return []
    p = j.provenance
    lines = [f"judge: {p.model} ({', '.join(p.served_models) or 'no answer'}) at {p.endpoint}, rubric {p.rubric}, "
             f"{j.mode}, prompt {p.prompt_hash[:12]}; {j.judged} of {j.requests} requests judged, {j.unjudged} "
             f"unjudged ({j.failure_rate:.0%}, max {j.max_failure_rate:g})"]
    if j.pairwise:
        pw = j.pairwise
        flip = "–" if pw.flip_rate is None else f"{pw.flip_rate:.0%}"
        lines.append(f"judge pairwise {pw.b} vs {pw.a}: {pw.wins_b} wins, {pw.wins_a} losses, {pw.ties} ties, "
                     f"{pw.flips} flipped with the order (flip rate {flip}) over {pw.pairs} samples")
    ag = j.agreement
    if ag.status == "measured" or ag.criteria or ag.pairwise:
        for c in [*ag.criteria, *([ag.pairwise] if ag.pairwise else [])]:
            trust = "" if c.trusted is None else ("  trusted" if c.trusted else "  UNTRUSTED")
            lines.append(f"judge vs humans {c.criterion}: κ {_agreement_cell(c.kappa)}, α {_agreement_cell(c.alpha)}"
                         f", n={c.n}{trust}")
        if ag.note:
            lines.append(f"judge vs humans: {ag.status} ({ag.note})")
    else:
        lines.append(f"judge vs humans: agreement {ag.status} ({ag.note})")
    for metric, why in j.untrusted.items():
        lines.append(f"{metric}: {why}")
    return lines


def judge_markdown(summary: JudgeSummary | None) -> list[str]:
    """The report's judge section (empty without a judge)."""
    if summary is None:
        return []
    j, p = summary, summary.provenance
    served, identity = ", ".join(p.served_models) or "–", p.identity or "identity not listed"
    out = ["", f"**LLM judge** `{p.model}` (served as {served}; {identity}) at {p.endpoint}, rubric `{p.rubric}`, "
           f"{j.mode}, response format {p.response_format}, prompt hash `{p.prompt_hash[:16]}`.", "",
           f"- {j.judged} of {j.requests} requests judged on {j.samples} samples; **{j.unjudged} unjudged** "
           f"({j.failure_rate:.0%}; gates fail above {j.max_failure_rate:.0%})"]
    out += [f"  - {n}× {reason}" for reason, n in sorted(j.failures.items(), key=lambda kv: -kv[1])]
    if j.pairwise:
        pw = j.pairwise
        flip = "–" if pw.flip_rate is None else f"{pw.flip_rate:.1%}"
        ci = "" if pw.flip_rate_ci is None else f" [{pw.flip_rate_ci[0]:.1%}, {pw.flip_rate_ci[1]:.1%}]"
        first = "" if pw.first_position_rate is None else \
            f"; picks the first-shown response {pw.first_position_rate:.0%}"
        out.append(f"- pairwise `{pw.b}` vs `{pw.a}`, each sample judged in both orders: {pw.wins_b} wins, "
                   f"{pw.wins_a} losses, {pw.ties} ties; **verdict flips with the order {flip}{ci}** "
                   f"({pw.flips} of {pw.pairs}){first}")
    ag = j.agreement
    trust_bar = ", ".join(f"{'κ' if k == 'kappa' else 'α'} ≥ {v:g}" for k, v in (j.trusted_if or {}).items())
    rows = [*ag.criteria, *([ag.pairwise] if ag.pairwise else [])]
    if rows:
        out += ["", f"Agreement with human grades ({ag.grades}, {ag.shared} shared samples; quadratic κ and "
                f"interval α vs the reviewers' median, bootstrap CIs){f'; trusted if {trust_bar}' if trust_bar else ''}"
                f"{f' — {ag.note}' if ag.note else ''}:", "",
                "| criterion | n | κ | α | trust |", "|---|---|---|---|---|"]
        for c in rows:
            trust = "–" if c.trusted is None else ("trusted" if c.trusted else f"**untrusted** ({c.reason})")
            out.append(f"| {c.criterion} | {c.n} | {_agreement_cell(c.kappa)} | {_agreement_cell(c.alpha)} | {trust} |")
    else:
        out.append(f"- agreement with human grades: **{ag.status}** ({ag.note})"
                   + (f"; trusted if {trust_bar}: judge scores untrusted" if trust_bar else ""))
    if j.untrusted:
        out += ["", "⚠ **Untrusted judge scores** (gates on them fail): "
                + "; ".join(f"`{m}`" for m in j.untrusted) + f". {next(iter(j.untrusted.values()))}."]
    return out
