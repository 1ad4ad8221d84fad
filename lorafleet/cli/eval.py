"""`lorafleet eval`: run suites, score files, rescore and compare runs, render reports.

Exit codes: 0 all gates pass, 1 a gate fails or the review app refused pushed items (`run --push-review`),
2 a configuration or input error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorafleet.cli.common import console, err_console, print_json, settings_from
from lorafleet.errors import ConfigError

app = typer.Typer(no_args_is_help=True)
DEFAULT_SCORE_METRICS = "rouge,bleu,chrf,token_f1,exact_match"
GRADES_HELP = "A grades export (review export --format grades): the judge's agreement with it (default: judge.grades)."


def _eval_settings(ctx: typer.Context):  # -> EvalSettings (imported lazily: keeps `lorafleet --help` fast)
    from lorafleet.evaluate.settings import EvalSettings

    core = settings_from(ctx)
    return EvalSettings(**core.model_dump())


@app.command()
def run(
    ctx: typer.Context,
    suite_path: Annotated[Path, typer.Argument(metavar="SUITE.yaml", help="The suite to run.")],
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible URL [LORAFLEET_EVAL_ENDPOINT].")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key [LORAFLEET_EVAL_API_KEY].")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: DATA_DIR/eval/runs/RUN_ID).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Regenerate every response.")] = False,
    grades: Annotated[Path | None, typer.Option("--grades", help=GRADES_HELP)] = None,
    push_review: Annotated[bool, typer.Option("--push-review/--no-push-review",
                                              help="Send review samples when the suite asks for them.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json instead of the table.")] = False,
) -> int:
    """Generate for every target, score, compare, apply gates and write the run."""
    from lorafleet.evaluate.runner import RunOptions, run_suite
    from lorafleet.evaluate.suite import load_suite
    from lorafleet.registry import Registry

    st = _eval_settings(ctx)
    suite = load_suite(suite_path)
    key = api_key or (st.eval_api_key.get_secret_value() if st.eval_api_key else None)
    opts = RunOptions(endpoint=endpoint or st.eval_endpoint, api_key=key,
                      concurrency=concurrency or st.eval_concurrency, out=out,
                      cache_path=None if no_cache else st.cache_path, data_dir=st.data_dir, grades=grades)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(target: str, done: int, total: int) -> None:
            if target not in tasks:
                tasks[target] = bar.add_task(target, total=total)
            bar.update(tasks[target], completed=done)

        outcome = run_suite(suite, suite_path, opts, runs_dir=st.runs_dir, registry=Registry(st.registry_dir),
                            progress=progress)
    from lorafleet.evaluate.card_link import link_run_to_cards

    for ref in link_run_to_cards(Registry(st.registry_dir), outcome.results, outcome.path):
        err_console.print(f"recorded on the card of {ref}", highlight=False)
    pushed = _push(st, outcome.path, suite) if push_review and (suite.review.sample or suite.review.pairwise) else True
    _show(outcome.results, outcome.path, as_json)
    return outcome.exit_code or (0 if pushed else 1)


def _push(st, run_dir: Path, suite) -> bool:
    """Send the run's review items; False when the review app refused some (`eval run` then exits 1).

    Refused items stay in the spool (DATA_DIR/eval/review-spool.jsonl) and go out with the next push
    once the cause is fixed; items spooled because the app is down are no failure of the run."""
    from lorafleet.evaluate.review_push import push_to_queues, review_items
    from lorafleet.evaluate.store import RunStore
    from lorafleet.samples import ReviewClient

    if not st.review_url:
        err_console.print("review push skipped: set LORAFLEET_REVIEW_URL (and LORAFLEET_REVIEW_TOKEN)")
        return True
    from lorafleet.evaluate.runner import run_plan
    from lorafleet.evaluate.targets import for_review

    store = RunStore(run_dir)
    spec, outputs = for_review(suite.review, run_plan(store.manifest()), store.outputs())
    items = review_items(store.manifest().run_id, suite.name, spec, store.samples(), outputs, store.scores())
    token = st.review_token.get_secret_value() if st.review_token else ""
    client = ReviewClient(st.review_url, token, st.eval_dir / "review-spool.jsonl")
    try:
        summary = push_to_queues(client, suite.review, items)
    finally:
        client.close()
    line = f"review: {summary.accepted} of {summary.items} item(s) accepted"
    if summary.spooled:
        line += f", {summary.spooled} spooled (app unreachable: {summary.unreachable}; sent by the next push)"
    if summary.refused:
        line += f", {summary.refused} refused (kept in {client.spool})"
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)
    for r in summary.refusals:
        err_console.print(f"review: queue {r.queue!r} refused {len(r.ids)} item(s) (HTTP {r.status}, {r.reason}): "
                          f"{r.message}\n  fix: {r.fix}", highlight=False, markup=False, soft_wrap=True)
    return not summary.refused


def _show(results, path: Path, as_json: bool) -> None:
    if as_json:
        print_json(results)
        return
    metrics = sorted({m for t in results.targets.values() for m in t.metrics})
    table = Table(title=f"{results.suite} — {results.samples} samples")
    table.add_column("target")
    for m in metrics:
        table.add_column(m, justify="right")
    comps = {(c.target, c.metric): c for c in results.comparisons if c.vs == results.baseline}
    for name, t in results.targets.items():
        cells = []
        for m in metrics:
            s, c = t.metrics.get(m), comps.get((name, m))
            text = "–" if s is None else f"{s.value:.3f} [{s.ci[0]:.3f}, {s.ci[1]:.3f}]"
            if c is not None:
                text += f" {c.delta:+.3f}{'*' if c.significant else ''}"
            cells.append(text)
        table.add_row(name, *cells)
    console.print(table)
    from lorafleet.evaluate.baselines import verdict_lines

    for line in verdict_lines(results):  # plain words: does each adapter beat the best baseline?
        console.print(line, highlight=False, markup=False)
    for g in results.gates:
        mark = "[green]pass[/]" if g.passed else "[bold red]FAIL[/]"
        console.print(f"gate {g.gate} on {g.target}: {mark} ({g.detail})", highlight=False)
    from lorafleet.evaluate.judge_report import judge_lines

    for line in judge_lines(results):  # provenance, unjudged, flips, κ/α vs reviewers, trust
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if results.forgetting is not None:
        from lorafleet.evaluate.forgetting_score import forgetting_lines

        for line in forgetting_lines(results.forgetting):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    for w in results.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    console.print(f"run: {path}", highlight=False)


@app.command()
def score(
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="prediction + reference(s) per line.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated metric names.")] = DEFAULT_SCORE_METRICS,
    label_pattern: Annotated[str | None, typer.Option(help="Regex for the label (group 1).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated label set (default: gold labels seen).")] = None,
    resamples: Annotated[int, typer.Option(min=1)] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Score stored predictions (no model): corpus figures with bootstrap CIs."""
    from lorafleet.evaluate.score_file import score_file

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    results = score_file(file, names, label_pattern=label_pattern,
                         labels=[x.strip() for x in labels.split(",")] if labels else None,
                         resamples=resamples, seed=seed)
    if as_json:
        print_json(results)
        return
    table = Table(title=str(file))
    for col in ("metric", "value", "95% CI", "config"):
        table.add_column(col)
    for r in results:
        cfg = r.config.get("signature") or ", ".join(f"{k}={v}" for k, v in r.config.items() if k != "labels")
        table.add_row(r.metric, f"{r.value:.4f}", f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]", str(cfg))
    console.print(table)


@app.command()
def rescore(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")],
    ctx: typer.Context,
    suite_path: Annotated[Path | None, typer.Option("--suite", help="A changed suite (metrics, gates).")] = None,
    grades: Annotated[Path | None, typer.Option("--grades", help=GRADES_HELP)] = None,
    endpoint: Annotated[str | None, typer.Option(help="Where a changed judge asks (default: the run's endpoint) "
                                                 "[LORAFLEET_EVAL_ENDPOINT].")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key for it [LORAFLEET_EVAL_API_KEY].")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> int:
    """Recompute metrics and gates of a stored run, without generating; the judge's stored verdicts are reused
    (a changed judge asks the endpoint) and `--grades` measures its agreement with reviewers."""
    from lorafleet.evaluate.runner import RunOptions
    from lorafleet.evaluate.runner import rescore as do_rescore
    from lorafleet.evaluate.store import RunStore
    from lorafleet.evaluate.suite import load_suite

    st = _eval_settings(ctx)
    key = api_key or (st.eval_api_key.get_secret_value() if st.eval_api_key else None)
    judge_opts = RunOptions(endpoint=endpoint or RunStore(run_dir).manifest().endpoint, api_key=key,
                            concurrency=st.eval_concurrency, cache_path=st.cache_path)
    results = do_rescore(run_dir, load_suite(suite_path) if suite_path else None, grades=grades,
                         suite_path=suite_path, judge_opts=judge_opts)
    _show(results, run_dir, as_json)
    return 0 if results.passed else 1


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A")],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B")],
    target_a: Annotated[str | None, typer.Option(help="Target in RUN_A (default: its last non-baseline).")] = None,
    target_b: Annotated[str | None, typer.Option(help="Target in RUN_B (default: its last non-baseline).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Paired comparison of the same samples across two runs (B − A)."""
    from lorafleet.evaluate.compare import compare_runs

    a, b, n, comps = compare_runs(run_a, run_b, target_a=target_a, target_b=target_b)
    if as_json:
        print_json({"a": a, "b": b, "samples": n, "comparisons": [c.model_dump(mode="json") for c in comps]})
        return
    table = Table(title=f"{b} − {a} on {n} shared samples")
    for col in ("metric", "delta", "95% CI", "p", "significant", "test"):
        table.add_column(col)
    for c in comps:
        table.add_row(c.metric, f"{c.delta:+.4f}", f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]", f"{c.p_value:.4f}",
                      "yes" if c.significant else "no", c.test)
    console.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN")],
    fmt: Annotated[str, typer.Option("--format", help="md, html or json.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Render a stored run's report."""
    from lorafleet.evaluate.correlate import load_correlation
    from lorafleet.evaluate.report import render_html, render_markdown
    from lorafleet.evaluate.runner import primary_metric
    from lorafleet.evaluate.store import RunStore
    from lorafleet.evaluate.suite import suite_from_dict
    from lorafleet.fsutil import atomic_write_text

    store = RunStore(run_dir)
    results = store.results()
    correlation = load_correlation(run_dir)  # written by `eval correlate`; None when the run has none
    if fmt == "json":
        text = results.model_dump_json(indent=2)
    elif fmt == "md":
        text = render_markdown(results, correlation=correlation)
    elif fmt == "html":
        suite = suite_from_dict(store.manifest().suite)
        text = render_html(results, store.samples(), store.outputs(), store.scores(), primary=primary_metric(suite),
                           correlation=correlation)
    else:
        raise ConfigError(f"unknown report format {fmt!r}", hint="use md, html or json")
    if output:
        atomic_write_text(output, text)
    else:
        typer.echo(text)


@app.command()
def correlate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder whose samples were pushed for review.")],
    grades: Annotated[Path, typer.Option("--grades", help="`lorafleet review export QUEUE --format grades` output.")],
    min_shared: Annotated[int, typer.Option(min=3, help="Fewest shared samples for a number.")] = 10,
    resamples: Annotated[int, typer.Option(min=100, help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print correlation.json.")] = False,
) -> None:
    """Spearman and Kendall (bootstrap CIs) of each metric against each rubric criterion's grades, over the
    run's samples that reviewers graded; writes RUN/correlation.json, which `eval report` shows."""
    from lorafleet.correlation import format_cell
    from lorafleet.evaluate.correlate import correlate_run, write_correlation

    report = correlate_run(run_dir, grades, min_shared=min_shared, reps=resamples, seed=seed)
    path = write_correlation(run_dir, report)
    if as_json:
        print_json(report)
        return
    t = report.table
    table = Table(title=f"metric ↔ grades: {report.samples} graded sample(s) of {', '.join(report.targets)} "
                        f"({report.matched_rows} of {report.grade_rows} grade rows)")
    for col in ("metric", "criterion", "n", "Spearman ρ [95% CI]", "Kendall τ [95% CI]"):
        table.add_column(col)
    for r in t.rows:
        table.add_row(r.metric, r.criterion, str(r.n), format_cell(r.spearman, r.spearman_ci, r.note),
                      format_cell(r.kendall, r.kendall_ci, r.note))
    console.print(table)
    console.print(f"wrote {path}", highlight=False)
