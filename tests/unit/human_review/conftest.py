"""Review app fixtures: every API test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lorafleet.human_review import crud, db, security
from lorafleet.human_review.app import create_app
from lorafleet.human_review.models import User
from lorafleet.human_review.rubrics import load_rubric
from lorafleet.human_review.schemas import QueueCreate, UserCreate
from lorafleet.human_review.service import open_db
from lorafleet.human_review.settings import ReviewSettings
from pydantic import SecretStr

from tests.unit.human_review.pg import PgServer, pg_bin

REPO = Path(__file__).resolve().parents[3]
GENERAL = REPO / "examples" / "rubrics" / "general.yaml"
ADMIN_TOKEN = "rva_test_admin_token"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL not installed: run scripts/system-deps.sh")
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def review_settings(tmp_path: Path, db_url: str) -> ReviewSettings:
    return ReviewSettings(data_dir=tmp_path / "data", review_database_url=db_url,
                          review_admin_token=SecretStr(ADMIN_TOKEN), lease_seconds=60)


@pytest.fixture
def factory(review_settings: ReviewSettings):  # noqa: ANN201
    f = open_db(review_settings)
    yield f
    f.kw["bind"].dispose()


@functools.cache
def _password_hash() -> str:
    return security.hash_password(PASSWORD)  # argon2 is slow on purpose: hash once per test session


def add_user(factory, name: str, role: str = "reviewer") -> int:  # noqa: ANN001
    with db.session_scope(factory) as s:
        user = User(name=UserCreate(name=name, role=role, password=PASSWORD).name, role=role,
                    password_hash=_password_hash(), created_at=time.time())
        s.add(user)
        s.flush()
        return user.id


def add_queue(factory, name: str, *, overlap: int = 1, members: list[str] = (), pairwise: bool = False) -> str:  # noqa: ANN001
    with db.session_scope(factory) as s:
        created = crud.create_queue(
            s, queue_in=QueueCreate(name=name, overlap=overlap, members=list(members),
                                    mode="pairwise" if pairwise else "rubric"),
            rubric=None if pairwise else load_rubric(GENERAL))
    return created.token


@pytest.fixture
def app(review_settings: ReviewSettings, factory):  # noqa: ANN001, ANN201
    return create_app(review_settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # noqa: ANN001
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "page carries no CSRF token"
    return m.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/").text)


def items(n: int, *, prefix: str = "i", pairwise: bool = False, **extra) -> list[dict]:  # noqa: ANN003
    out = []
    for i in range(n):
        item = {"id": f"{prefix}{i}", "prompt": f"question {i}", "reference": f"ref {i}", **extra}
        if pairwise:
            item["responses"] = {"base": f"base answer {i}", "support@v2": f"tuned answer {i}"}
        else:
            item["response"] = f"answer {i}"
        out.append(item)
    return out


def ingest(client: TestClient, queue: str, rows: list[dict], token: str = ADMIN_TOKEN):  # noqa: ANN201
    return client.post("/api/v1/items", json={"queue": queue, "items": rows},
                       headers={"Authorization": f"Bearer {token}"})
