"""`adapters show`: one version's card read top to bottom as a story.

data (files, hashes, held-out check) → training → fidelity → eval runs → forgetting → review → decisions.
The text and `--json` hold the same sections in the same order.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from lorafleet.card import AdapterCard
from lorafleet.registry import AliasTarget, ResolvedAdapter

SECTIONS = ("data", "training", "fidelity", "eval_runs", "forgetting", "review", "decisions")


def story_json(resolved: ResolvedAdapter, aliases: dict[str, AliasTarget],
               canaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The card's fields in story order (every card field at the top level, as before), plus where it lives,
    which aliases serve it and any canary of it."""
    card = resolved.card.model_dump(mode="json")
    head = {k: card.pop(k) for k in ("schema_version", "name", "version", "created_at", "source")}
    ordered = {
        **head, "served_name": resolved.served_name, "path": str(resolved.path),
        "aliases": alias_shares(aliases, resolved.version),
        # data
        "base": card.pop("base"), "files": card.pop("files"), "dataset": card.pop("dataset"),
        "held_out": card.pop("held_out"),
        # training
        "lora": card.pop("lora"), "trained_on": card.pop("trained_on"), "training": card.pop("training"),
        "metrics": card.pop("metrics"), "library_versions": card.pop("library_versions"),
        "mlflow_run_id": card.pop("mlflow_run_id"),
        "fidelity": card.pop("fidelity"), "eval_runs": card.pop("eval_runs"), "forgetting": card.pop("forgetting"),
        "review": card.pop("review"), "decisions": card.pop("decisions"), "canaries": canaries,
    }
    return {**ordered, **card}  # notes and any field added later keep their place at the end


def alias_shares(aliases: dict[str, AliasTarget], version: str) -> dict[str, float]:
    """alias → the share of its traffic this version gets (1.0 for a plain alias)."""
    out = {}
    for alias, target in sorted(aliases.items()):
        if target == version:
            out[alias] = 1.0
        elif isinstance(target, dict) and version in target:
            out[alias] = float(target[version])
    return out


def story_lines(resolved: ResolvedAdapter, aliases: dict[str, AliasTarget],
                canaries: list[dict[str, Any]]) -> list[str]:
    """Rich-markup lines (card text escaped) for the terminal."""
    card = resolved.card
    shares = alias_shares(aliases, resolved.version)
    served = ", ".join(a if s == 1 else f"{a} ({s:.0%})" for a, s in shares.items()) or "none"
    lines = [f"[bold]{resolved.served_name}[/]  {escape(str(resolved.path))}",
             f"  aliases: {escape(served)}; created {card.created_at.isoformat(timespec='seconds')}, {card.source}"]
    for title, section in (("data", data_lines(card)), ("training", training_lines(card)),
                           ("fidelity", [fidelity_line(card.fidelity)]), ("eval runs", eval_lines(card)),
                           ("forgetting", [escape(x) for x in forgetting_lines(card)]),
                           ("review", [escape(x) for x in review_lines(card)]),
                           ("decisions", decision_lines(card, canaries))):
        lines.append(f"[bold]── {title}[/]")
        lines += [f"  {x}" for x in section]
    if card.notes:
        lines += ["[bold]── notes[/]", f"  {escape(card.notes)}"]
    return lines


# ---- sections ------------------------------------------------------------------------------------

def data_lines(card: AdapterCard) -> list[str]:
    b = card.base
    sha = f", weights sha256 {b.weights_sha256[:12]}…" if b.weights_sha256 else ""
    lines = [escape(f"base: {b.id} {b.path or ''}".strip() + sha)]
    lines += [escape(f"file {name}: sha256 {digest[:16]}…") for name, digest in sorted(card.files.items())]
    if not card.dataset:
        lines.append("dataset: none recorded" + (" (imported)" if card.source == "imported" else ""))
    for d in card.dataset:
        records = f", {d.records} records" if d.records is not None else ""
        lines.append(escape(f"dataset {d.split}: {d.path}{records}, sha256 {d.sha256[:16]}…"))
    lines.append(escape(held_out_line(card.held_out)))
    return lines


def held_out_line(h: dict[str, Any]) -> str:
    if not h:
        return "held-out check: not run (imported, or trained before the guard)"
    matches = h.get("matches", 0)
    verdict = "no training record matches a held-out example" if not matches else (
        f"{matches} training record(s) match held-out examples" + (" (allowed with --allow-held-out)"
                                                                   if h.get("allowed") else ""))
    return f"held-out check: {verdict} (index {h.get('index_version')}, near-duplicate Jaccard {h.get('threshold')})"


def training_lines(card: AdapterCard) -> list[str]:
    lo = card.lora
    extra = f", dropout {lo.dropout:g}" if lo.dropout is not None else ""
    quant = f", {lo.quantization}" if lo.quantization else ""
    lines = [escape(f"LoRA rank {lo.rank}, alpha {lo.alpha:g}, targets {', '.join(lo.target_modules)}{extra}{quant}"),
             escape(trained_on_line(card))]
    if card.training:
        lines.append(escape("hyperparameters: " + ", ".join(f"{k}={_short(v)}" for k, v in card.training.items())))
    metrics = {k: v for k, v in card.metrics.items() if k != "probe_warnings"}
    if metrics:
        lines.append(escape("metrics: " + ", ".join(f"{k}={_short(v)}" for k, v in metrics.items())))
    for w in card.metrics.get("probe_warnings") or []:
        lines.append(f"[red]probe warning[/] {escape(str(w.get('at', ''))[:19])} by {escape(str(w.get('who')))}: "
                     f"{escape(str(w.get('detail')))}")
    if card.library_versions:
        lines.append(escape("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(card.library_versions.items()))))
    if card.mlflow_run_id:
        lines.append(escape(f"mlflow run: {card.mlflow_run_id}"))
    return lines


def _short(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 60 else text[:57] + "…"


def trained_on_line(card: AdapterCard) -> str:
    """The base variant the adapter was trained on, and so is served on (issue 15 §2), as one line."""
    from lorafleet.base_variants import variant_of

    t = card.trained_on
    if t is None:
        return f"trained on: {variant_of(card)} (from lora.quantization; registered before trained_on)"
    sha = f", weights sha256 {t.weights_sha256[:12]}…" if t.weights_sha256 else ""
    return f"trained on: {t.variant} base {t.path or '-'}{sha}; served on that variant"


def fidelity_line(f: dict) -> str:
    """The fidelity check as one line of `adapters show`."""
    if not f:
        return "fidelity: not checked (registered before the check)"
    if f.get("skipped"):
        return f"fidelity: skipped ({escape(str(f['skipped']))})"
    tol = f.get("tolerance", {})
    verdict = "[green]passed[/]" if f.get("passed") else ("[red]FAILED, registered with --force[/]"
                                                          if f.get("forced") else "[red]failed[/]")
    secs = f.get("seconds", {})
    return (f"fidelity: {verdict}: token agreement {f['token_agreement']:.3f} (>= {tol.get('min_agreement')}), "
            f"mean |Δ logprob| {f['mean_abs_logprob_diff']:.4f} (<= {tol.get('max_mean_abs_diff')}), "
            f"max {f['max_abs_logprob_diff']:.3f}; {f['prompts']} prompts, {f['tokens']} tokens, engine "
            f"{f['engine_dtype']} ({escape(str(f.get('engine')))}), {secs.get('check', 0):.0f} s check + "
            f"{secs.get('engine_start', 0):.0f} s engine start")


def eval_lines(card: AdapterCard) -> list[str]:
    if not card.eval_runs:
        return ["none (run `lorafleet eval run SUITE` with this version as a target)"]
    lines = []
    for r in card.eval_runs:
        verdict = "[green]gates passed[/]" if r.get("passed") else "[red]gates FAILED[/]"
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in (r.get("metrics") or {}).items())
        lines.append(f"{escape(str(r.get('created_at', ''))[:19])}  {escape(str(r.get('suite')))} as "
                     f"{escape(str(r.get('target')))}: {verdict}; {r.get('samples')} samples; {escape(metrics)}  "
                     f"[dim]run {escape(str(r.get('run_id')))}[/]")
    return lines


def forgetting_lines(card: AdapterCard) -> list[str]:
    from lorafleet.evaluate.forgetting_score import card_lines

    return card_lines(card.forgetting)


def review_lines(card: AdapterCard) -> list[str]:
    try:
        from lorafleet.review_summary import review_lines as render
    except ImportError:  # the review summary module arrives with the review app's card writer
        return ["none yet"] if not card.review else [str(card.review)]
    return render(card.review)


def decision_lines(card: AdapterCard, canaries: list[dict[str, Any]]) -> list[str]:
    from lorafleet.cli.promotion_view import decision_line

    lines = [escape(decision_line(d)) for d in card.decisions] or ["none (see `lorafleet adapters promote`)"]
    for c in canaries:
        lines.append(escape(f"canary on {c['alias']}: {c['canary']} at {c['percent']:g}% vs {c['stable']}, "
                            f"{c['state'].replace('_', ' ')} since {str(c['started_at'])[:19]}"))
    return lines
