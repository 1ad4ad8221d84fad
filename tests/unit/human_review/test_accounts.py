"""Account and queue management (issue 17, section 4): disable/enable, password reset, member removal,
queue deletion that keeps its grades, and grading only with a lease — on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import stat
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from lorafleet.human_review import crud, db, leases
from lorafleet.human_review.errors import Conflict, NotFound, ReviewError
from lorafleet.human_review.models import Base, Slot
from lorafleet.human_review.service import delete_queue, export_records
from sqlalchemy import select

from lorafleet.cli.main import main
from tests.unit.human_review.conftest import (
    ADMIN_TOKEN,
    GENERAL,
    PASSWORD,
    add_queue,
    add_user,
    csrf_of,
    ingest,
    items,
    login,
)
from tests.unit.human_review.test_leases import GOOD, _fill, _next

FORM = {"score_relevance": "4", "score_accuracy": "4", "score_coherence": "4", "score_safety": "5"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _logged_in(client) -> bool:  # noqa: ANN001
    return client.get("/", follow_redirects=False).status_code == 200


def _login_status(client, name: str, password: str = PASSWORD) -> int:  # noqa: ANN001
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token},
                       follow_redirects=False).status_code


def test_repro_a_disabled_user_cannot_log_in_and_their_sessions_end(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", items(1))
    login(client, "ann")
    client.get("/q/q/next")  # ann holds a lease
    with db.session_scope(factory) as s:
        crud.set_disabled(s, name="ann", disabled=True)
    assert not _logged_in(client)  # the open session ended at once
    client.cookies.clear()
    assert _login_status(client, "ann") == 401  # and the right password no longer logs in
    with factory() as s:  # the lease went back to the pool
        assert s.scalar(select(Slot.state)) == "free"
    with db.session_scope(factory) as s:
        crud.set_disabled(s, name="ann", disabled=False)
    assert _login_status(client, "ann") == 303


def test_repro_a_password_reset_ends_sessions_and_the_old_password(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    login(client, "ann")
    with db.session_scope(factory) as s:
        crud.reset_password(s, name="ann", password="a brand new secret")
    assert not _logged_in(client)
    client.cookies.clear()
    assert _login_status(client, "ann") == 401
    assert _login_status(client, "ann", "a brand new secret") == 303
    with db.session_scope(factory) as s, pytest.raises(ReviewError, match="8 to 1024"):
        crud.reset_password(s, name="ann", password="short")
    with db.session_scope(factory) as s, pytest.raises(NotFound, match="'nobody'"):
        crud.reset_password(s, name="nobody", password="long enough")


def test_repro_a_removed_member_loses_the_queue_but_keeps_their_grades(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", items(2))
    csrf = login(client, "ann")
    page = client.get("/q/q/next")
    client.post(page.url.path + "/grade", data={**FORM, "csrf_token": csrf})
    held = client.get("/q/q/next").url.path  # a lease on the second item
    with db.session_scope(factory) as s:
        assert crud.remove_member(s, queue=crud.get_queue(s, name="q"), user_name="ann") is True
        assert crud.remove_member(s, queue=crud.get_queue(s, name="q"), user_name="ann") is False
    assert client.get("/q/q/next").status_code == 404
    assert client.post(held + "/grade", data={**FORM, "csrf_token": csrf}).status_code == 404
    grades = client.get("/api/v1/queues/q/export?format=grades", headers=ADMIN).text.splitlines()
    assert [json.loads(g)["reviewer"] for g in grades] == ["ann"]
    with factory() as s:  # the held lease went back
        assert s.scalar(select(Slot.state).where(Slot.state == "leased")) is None


def test_repro_a_deleted_queue_is_hidden_but_its_grades_are_archived_and_exported(client, factory, review_settings,  # noqa: ANN001
                                                                                  tmp_path) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    token = add_queue(factory, "q", members=["ann"])
    ingest(client, "q", items(2))
    csrf = login(client, "ann")
    page = client.get("/q/q/next")
    client.post(page.url.path + "/grade", data={**FORM, "csrf_token": csrf})
    archived = delete_queue(factory, queue="q", data_dir=review_settings.data_dir)
    assert archived.grades == 1
    archive = Path(archived.archive)
    assert [json.loads(line)["reviewer"] for line in archive.read_text().splitlines()] == ["ann"]
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    # hidden from the reviewer, the pages and the API
    assert 'href="/q/q/next"' not in client.get("/").text
    assert client.get("/q/q/next").status_code == 404
    assert ingest(client, "q", items(1, prefix="new"), token=token).status_code == 401
    r = client.get("/api/v1/queues/q/export?format=grades", headers=ADMIN)
    assert r.status_code == 404 and "deleted" in r.json()["error"]["message"]
    # never dropped: the export still works when asked for
    r = client.get("/api/v1/queues/q/export?format=grades&include_deleted=true", headers=ADMIN)
    assert [json.loads(g)["reviewer"] for g in r.text.splitlines()] == ["ann"]
    rows, _ = export_records(factory, queue="q", fmt="grades", data_dir=review_settings.data_dir,
                             include_deleted=True)
    assert len(rows) == 1
    with db.session_scope(factory) as s, pytest.raises(NotFound, match="--include-deleted"):
        crud.get_queue(s, name="q")
    with pytest.raises(Conflict, match="deleted"):  # the name stays taken
        add_queue(factory, "q")


def test_repro_grading_without_holding_a_lease_is_refused(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_user(factory, "ben")
    add_queue(factory, "q", overlap=2, members=["ann", "ben"])
    ingest(client, "q", items(1))
    login(client, "ann")
    anns_item = client.get("/q/q/next").url.path  # ann's lease; ben never got this item
    client.cookies.clear()
    csrf = login(client, "ben")
    r = client.post(anns_item + "/grade", data={**FORM, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 409 and "no lease" in r.text
    grades = client.get("/api/v1/queues/q/export?format=grades", headers=ADMIN).text
    assert grades == ""


def test_submit_without_a_lease_is_refused_in_the_library_too(factory) -> None:  # noqa: ANN001
    a, b = add_user(factory, "a"), add_user(factory, "b")
    add_queue(factory, "q", overlap=2)
    _fill(factory, "q", 1)
    took = _next(factory, "q", a)
    with factory() as s:
        q = crud.get_queue(s, name="q")
        item = s.scalar(select(leases.Item).where(leases.Item.ext_id == took))
        with pytest.raises(Conflict, match="no lease"):
            leases.submit(s, queue=q, item=item, reviewer_id=b, grade=GOOD)
        leases.skip(s, item=item, reviewer_id=a)  # a skipped item is no longer a's to grade either
        with pytest.raises(Conflict, match="no lease"):
            leases.submit(s, queue=q, item=item, reviewer_id=a, grade=GOOD)


def test_the_migrations_match_the_models(factory) -> None:  # noqa: ANN001
    engine = factory.kw["bind"]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def _cli(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:  # noqa: ANN001
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_cli_manages_users_members_and_queues(capsys, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    dd = ["--data-dir", str(tmp_path / "data")]
    assert _cli(capsys, *dd, "review", "users", "add", "ann", "--password-stdin", stdin="long enough pw\n",
                monkeypatch=monkeypatch)[0] == 0
    assert _cli(capsys, *dd, "review", "queues", "create", "q", "--rubric", str(GENERAL), "--member", "ann")[0] == 0
    code, out, err = _cli(capsys, *dd, "review", "users", "disable", "ann")
    assert code == 0 and "disabled" in out, err
    code, out, _ = _cli(capsys, *dd, "review", "users", "list", "--json")
    assert json.loads(out)[0] == {"id": 1, "name": "ann", "role": "reviewer", "disabled": True}
    assert _cli(capsys, *dd, "review", "users", "enable", "ann")[0] == 0
    code, out, _ = _cli(capsys, *dd, "review", "users", "list", "--json")
    assert json.loads(out)[0]["disabled"] is False
    code, out, err = _cli(capsys, *dd, "review", "users", "reset-password", "ann", "--password-stdin",
                          stdin="another long pw\n", monkeypatch=monkeypatch)
    assert code == 0, err
    code, _, err = _cli(capsys, *dd, "review", "users", "reset-password", "ann", "--password-stdin",
                        stdin="short\n", monkeypatch=monkeypatch)
    assert code == 2 and "8 to 1024" in err and "Traceback" not in err
    code, _, err = _cli(capsys, *dd, "review", "users", "disable", "nobody")
    assert code == 2 and "user 'nobody' not found" in err
    code, out, _ = _cli(capsys, *dd, "review", "queues", "remove-member", "q", "ann")
    assert code == 0 and "no longer reviews q" in out
    code, out, _ = _cli(capsys, *dd, "review", "queues", "remove-member", "q", "ann")
    assert code == 0 and "was not a member" in out
    code, out, err = _cli(capsys, *dd, "review", "queues", "delete", "q", "--json")
    assert code == 0, err
    archive = Path(json.loads(out)["archive"])
    assert archive.parent == tmp_path / "data" / "review-archive" and archive.read_text() == ""
    code, out, _ = _cli(capsys, *dd, "review", "queues", "list", "--json")
    assert json.loads(out) == []
    code, out, _ = _cli(capsys, *dd, "review", "queues", "list", "--include-deleted", "--json")
    assert [q["name"] for q in json.loads(out)] == ["q"]
    code, _, err = _cli(capsys, *dd, "review", "export", "q")
    assert code == 2 and "was deleted" in err and "--include-deleted" in err
    code, out, err = _cli(capsys, *dd, "review", "export", "q", "--include-deleted")
    assert code == 0 and out == "", err
    code, _, err = _cli(capsys, *dd, "review", "queues", "delete", "q")
    assert code == 2 and "was deleted" in err
