"""`lorafleet review …`: the human review web app — serve, users, queues, import, export, stats."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from lorafleet.cli.common import console, print_json, settings_from
from lorafleet.errors import ConfigError

if TYPE_CHECKING:
    from lorafleet.human_review.settings import ReviewSettings

app = typer.Typer(help="The human review web app.", no_args_is_help=True)
users_app = typer.Typer(help="Reviewer and admin accounts.", no_args_is_help=True)
queues_app = typer.Typer(help="Review queues and their ingest tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(queues_app, name="queues")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _settings(ctx: typer.Context, **overrides: object) -> ReviewSettings:
    from pydantic import ValidationError

    from lorafleet.human_review.settings import ReviewSettings

    core = settings_from(ctx)
    try:
        return ReviewSettings(data_dir=core.data_dir).with_overrides(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"setting {err['loc'][0]!r}: {err['msg']}", hint="check LORAFLEET_ review settings") from None


def _factory(ctx: typer.Context, database_url: str | None = None):  # noqa: ANN202
    from lorafleet.human_review.service import open_db

    return open_db(_settings(ctx, review_database_url=database_url))


DbOpt = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL (default: <data-dir>/review.db).")]
RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", help="Adapter registry whose cards get card.review as grades arrive [LORAFLEET_REVIEW_REGISTRY].")]


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8001).")] = None,
    database_url: DbOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Run the review web app (migrations run on start)."""
    import uvicorn

    from lorafleet.human_review.app import create_app

    settings = _settings(ctx, review_host=host, review_port=port, review_database_url=database_url,
                         review_registry=registry)
    app_ = create_app(settings)
    console.print(f"review app on http://{settings.review_host}:{settings.review_port}")
    if settings.review_registry is not None:
        console.print(f"writing card.review of graded adapter versions to {settings.review_registry}", soft_wrap=True)
    else:
        console.print("no registry configured (--registry / LORAFLEET_REVIEW_REGISTRY): card.review is not written")
    if settings.review_trusted_proxies:
        console.print(f"believing X-Forwarded-For from {', '.join(settings.review_trusted_proxies)}")
    # uvicorn's own proxy_headers would trust X-Forwarded-For from loopback: any local client could pick
    # its address (and dodge the login limiter). Off; the app believes only LORAFLEET_REVIEW_TRUSTED_PROXIES.
    uvicorn.run(app_, host=settings.review_host, port=settings.review_port, log_level="warning",
                proxy_headers=False, forwarded_allow_ips=[])


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str,
    role: Annotated[Literal["admin", "reviewer"], typer.Option(help="admin or reviewer.")] = "reviewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    database_url: DbOpt = None,
) -> None:
    """Add an account (password prompted, or read from stdin)."""
    from pydantic import ValidationError

    from lorafleet.human_review import crud, db
    from lorafleet.human_review.schemas import UserCreate

    password = _password(password_stdin)
    try:
        user_in = UserCreate(name=name, role=role, password=password)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{err['loc'][0]}: {err['msg']}", hint="passwords need 8+ characters") from None
    with db.session_scope(_factory(ctx, database_url)) as session:
        crud.create_user(session, user_in=user_in)
    console.print(f"added {role} [bold]{name}[/]")


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@users_app.command("list")
def users_list(ctx: typer.Context, database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Accounts, their role and whether they are disabled."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        users = crud.list_users(session)
    if json_out:
        print_json([u.model_dump() for u in users])
        return
    for u in users:
        console.print(f"{u.name:24} {u.role:8} {'disabled' if u.disabled else ''}", highlight=False)


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: str, database_url: DbOpt = None) -> None:
    """Disable an account: no more logins, its sessions end at once, its leases go back. Grades stay."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        crud.set_disabled(session, name=name, disabled=True)
    console.print(f"disabled [bold]{name}[/] (logged out everywhere)")


@users_app.command("enable")
def users_enable(ctx: typer.Context, name: str, database_url: DbOpt = None) -> None:
    """Enable a disabled account again (it logs in afresh)."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        crud.set_disabled(session, name=name, disabled=False)
    console.print(f"enabled [bold]{name}[/]")


@users_app.command("reset-password")
def users_reset_password(
    ctx: typer.Context,
    name: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    database_url: DbOpt = None,
) -> None:
    """Set a new password (prompted, or read from stdin); every session of the account ends."""
    from lorafleet.human_review import crud, db

    factory = _factory(ctx, database_url)
    with db.session_scope(factory) as session:
        crud.require_user(session, name=name)  # an unknown name fails before the prompt
    password = _password(password_stdin)
    with db.session_scope(factory) as session:
        crud.reset_password(session, name=name, password=password)
    console.print(f"new password for [bold]{name}[/] (logged out everywhere)")


@queues_app.command("create")
def queues_create(
    ctx: typer.Context,
    name: str,
    rubric: Annotated[Path | None, typer.Option(help="Rubric YAML (see examples/rubrics/).")] = None,
    pairwise: Annotated[bool, typer.Option("--pairwise", help="Blind A/B comparisons instead of a rubric.")] = False,
    overlap: Annotated[int, typer.Option(help="Each item is graded by exactly this many reviewers.")] = 1,
    member: Annotated[list[str] | None, typer.Option(help="Reviewer allowed on the queue (repeatable).")] = None,
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a queue and print its ingest token (shown once)."""
    from lorafleet.human_review import crud, db
    from lorafleet.human_review.rubrics import load_rubric
    from lorafleet.human_review.schemas import QueueCreate

    loaded = load_rubric(rubric) if rubric else None
    queue_in = _validated(QueueCreate, name=name, mode="pairwise" if pairwise else "rubric", overlap=overlap,
                          members=member or [])
    with db.session_scope(_factory(ctx, database_url)) as session:
        created = crud.create_queue(session, queue_in=queue_in, rubric=loaded)
    if json_out:
        print_json(created)
        return
    console.print(f"queue [bold]{created.name}[/] ({created.mode}, overlap {created.overlap}); ingest token:")
    typer.echo(created.token)


def _validated(model, **fields):  # noqa: ANN001, ANN202
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


@queues_app.command("list")
def queues_list(
    ctx: typer.Context,
    include_deleted: Annotated[bool, typer.Option("--include-deleted", help="Also list deleted queues.")] = False,
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Queues with progress."""
    from sqlalchemy import select

    from lorafleet.human_review import crud, db
    from lorafleet.human_review.models import Queue

    stmt = select(Queue).order_by(Queue.name)
    if not include_deleted:
        stmt = stmt.where(Queue.deleted_at.is_(None))
    with db.session_scope(_factory(ctx, database_url)) as session:
        rows = [crud.queue_public(session, queue=q) for q in session.scalars(stmt)]
    if json_out:
        print_json([r.model_dump() for r in rows])
        return
    for r in rows:
        console.print(f"{r.name:24} {r.mode:8} items {r.items:7}  grades {r.grades}/{r.needed}")


@queues_app.command("add-member")
def queues_add_member(ctx: typer.Context, queue: str, user: str, database_url: DbOpt = None) -> None:
    """Allow a reviewer to work on a queue."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        crud.add_member(session, queue=crud.get_queue(session, name=queue), user_name=user)
    console.print(f"{user} may review {queue}")


@queues_app.command("remove-member")
def queues_remove_member(ctx: typer.Context, queue: str, user: str, database_url: DbOpt = None) -> None:
    """Take a reviewer off a queue: no more items from it, open leases go back; their grades stay."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        removed = crud.remove_member(session, queue=crud.get_queue(session, name=queue), user_name=user)
    console.print(f"{user} no longer reviews {queue}" if removed else f"{user} was not a member of {queue}")


@queues_app.command("delete")
def queues_delete(ctx: typer.Context, queue: str, database_url: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Delete a queue: hidden from reviewers and the API, its token stops working. Nothing is dropped:
    its grades are written to <data-dir>/review-archive/ and stay exportable with
    `review export QUEUE --include-deleted`."""
    from lorafleet.human_review.service import delete_queue

    settings = _settings(ctx, review_database_url=database_url)
    archived = delete_queue(_factory(ctx, database_url), queue=queue, data_dir=settings.data_dir)
    if json_out:
        print_json(archived)
        return
    console.print(f"deleted queue [bold]{queue}[/]; {archived.grades} grade(s) archived to {archived.archive} "
                  f"(also: lorafleet review export {queue} --include-deleted)", highlight=False)


@queues_app.command("token")
def queues_token(ctx: typer.Context, queue: str, database_url: DbOpt = None) -> None:
    """Issue a new ingest token for a queue (the old one stops working)."""
    from lorafleet.human_review import crud, db

    with db.session_scope(_factory(ctx, database_url)) as session:
        token = crud.rotate_token(session, queue=crud.get_queue(session, name=queue))
    typer.echo(token)


@app.command("admin-token")
def admin_token_cmd(ctx: typer.Context) -> None:
    """Print the admin API token (ingest into any queue, stats, exports)."""
    from lorafleet.human_review.app import admin_token

    typer.echo(admin_token(_settings(ctx)))


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Path,
    queue: Annotated[str, typer.Option(help="Queue to add the items to (created when --rubric/--pairwise given).")],
    rubric: Annotated[Path | None, typer.Option(help="Rubric YAML for a new queue.")] = None,
    pairwise: Annotated[bool, typer.Option("--pairwise", help="New queue is pairwise.")] = False,
    overlap: Annotated[int, typer.Option(help="Overlap for a new queue.")] = 1,
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import items from JSONL: id, prompt (text or messages), response | responses, reference, adapter,
    scores, metadata. Idempotent by id."""
    from lorafleet.human_review import crud, db
    from lorafleet.human_review.errors import NotFound
    from lorafleet.human_review.rubrics import load_rubric
    from lorafleet.human_review.schemas import QueueCreate
    from lorafleet.human_review.service import import_items, read_items

    items = read_items(file)  # validate the whole file before touching the database
    factory = _factory(ctx, database_url)
    with db.session_scope(factory) as session:
        try:
            crud.get_queue(session, name=queue)
        except NotFound:
            if rubric is None and not pairwise:
                raise
            created = crud.create_queue(session, rubric=load_rubric(rubric) if rubric else None,
                                        queue_in=_validated(QueueCreate, name=queue, overlap=overlap,
                                                            mode="pairwise" if pairwise else "rubric"))
            console.print(f"created queue {queue}; ingest token: {created.token}")
    result = import_items(factory, queue=queue, items=items)
    if json_out:
        print_json(result)
    else:
        console.print(f"{result.created} item(s) added, {result.existing} already there")


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    queue: str,
    format: Annotated[Literal["grades", "training", "pairs"],  # noqa: A002 - the flag is --format
                      typer.Option(help="grades | training | pairs")] = "grades",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    resolve: Annotated[Literal["majority", "adjudicated", "all"], typer.Option(
        help="training, with overlap: one record per item from the answer most reviewers gave (ties are "
             "conflicts, left out); adjudicated: only items an admin graded, the admin's grade decides; "
             "all: one record per grade (duplicates, marked).")] = "majority",
    include_held_out: Annotated[bool, typer.Option(
        "--include-held-out", help="training: also export items that came from eval runs, marked "
                                   "held_out (train's guard still refuses them).")] = False,
    allow_held_out: Annotated[bool, typer.Option(
        "--allow-held-out", help="training: export records whose prompt is in the held-out index "
                                 "(marked held_out) instead of refusing with exit 1.")] = False,
    include_deleted: Annotated[bool, typer.Option(
        "--include-deleted", help="Export a deleted queue (its grades are kept, never dropped).")] = False,
    database_url: DbOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary (records, conflicts, left out) "
                                                          "as JSON; needs -o.")] = False,
) -> None:
    """Export grades, training records (chat messages) or preference pairs as JSONL.

    Training exports leave out items from eval runs (their prompts are test data) and refuse records
    whose prompt is held out (exit 1); conflicts between reviewers are listed on stderr."""
    import json

    from lorafleet.cli.common import err_console
    from lorafleet.human_review.service import export_records, write_export

    if json_out and output is None:
        raise ConfigError("--json prints the export summary on stdout", hint="write the records with -o FILE")
    settings = _settings(ctx, review_database_url=database_url)
    factory = _factory(ctx, database_url)
    kw = {"resolve": resolve, "include_held_out": include_held_out, "allow_held_out": allow_held_out,
          "include_deleted": include_deleted}
    if output is not None:
        summary = write_export(factory, queue=queue, fmt=format, out=output, data_dir=settings.data_dir, **kw)
    else:
        rows, summary = export_records(factory, queue=queue, fmt=format, data_dir=settings.data_dir, **kw)
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    _report_export(summary, err_console)
    if json_out:
        print_json(summary)
    elif output is not None:
        console.print(f"wrote {summary.records} record(s) to {output}", highlight=False)


def _report_export(summary, err) -> None:  # noqa: ANN001 - ExportSummary, rich Console
    """What a training export left out or let through, on stderr: one plain line each."""
    def say(text: str) -> None:
        err.print(text, highlight=False, markup=False, soft_wrap=True)

    if summary.index_note:
        say(f"note: {summary.index_note}")
    if summary.held_out_left_out:
        say(f"left out {len(summary.held_out_left_out)} item(s) from eval runs (held out; --include-held-out "
            f"exports them marked): {', '.join(summary.held_out_left_out)}")
    if summary.conflicts:
        kept = " (exported, marked conflict)" if summary.resolve == "all" else " (left out)"
        say(f"{len(summary.conflicts)} conflict(s) between reviewers{kept}: "
            f"{', '.join(c.item for c in summary.conflicts)}")
        for c in summary.conflicts:
            say(f"  {c.item}: {c.why}: " + "; ".join(f"{n}x {a!r}" for a, n in c.answers.items()))
    if summary.resolve == "adjudicated" and summary.unadjudicated:
        say(f"left out {summary.unadjudicated} item(s) no admin has graded yet")
    for m in summary.held_out_allowed:
        say(f"warning (--allow-held-out): {m.line()}")


@app.command()
def stats(ctx: typer.Context, queue: str, database_url: DbOpt = None) -> None:
    """Progress, agreement, gold accuracy and rankings of a queue (JSON)."""
    from lorafleet.human_review import crud, db
    from lorafleet.human_review import stats as stats_mod

    with db.session_scope(_factory(ctx, database_url)) as session:
        print_json(stats_mod.queue_stats(session, queue=crud.get_queue(session, name=queue)))


@app.command("sync-cards")
def sync_cards(
    ctx: typer.Context,
    registry: Annotated[Path | None, typer.Option(
        "--registry", help="Registry to write (default: LORAFLEET_REVIEW_REGISTRY, else <data-dir>/registry).")] = None,
    database_url: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recompute card.review of every adapter version the review database holds (e.g. after the app was down)."""
    from lorafleet.human_review.card_review import sync_all
    from lorafleet.human_review.service import open_db
    from lorafleet.registry import Registry

    settings = _settings(ctx, review_database_url=database_url, review_registry=registry)
    root = settings.review_registry or settings.registry_dir
    if not Path(root).is_dir():
        raise ConfigError(f"registry {root} is not a directory", hint="pass --registry DIR (the adapters' registry)")
    report = sync_all(open_db(settings), Registry(Path(root)))
    if json_out:
        print_json({"registry": str(root), "written": report.written, "not_in_registry": report.not_in_registry,
                    "failed": report.failed})
    else:
        for ref in report.written:
            console.print(f"{ref}: card.review written")
        for ref in report.not_in_registry:
            console.print(f"{ref}: not in {root} (skipped)")
        for ref, why in report.failed.items():
            console.print(f"[red]{ref}: not written ({why})[/]")
        console.print(f"{len(report.written)} card(s) written, {len(report.not_in_registry)} version(s) not in the "
                      f"registry, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)
