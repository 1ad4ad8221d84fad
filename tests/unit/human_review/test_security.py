"""The review app under attack (issue 17, section 5): the login limiter, server-side sessions, body limits,
text caps and the database file's mode."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from lorafleet.human_review import db
from lorafleet.human_review.app import create_app
from lorafleet.human_review.middleware import forwarded_client, parse_networks
from lorafleet.human_review.models import LoginSession, User
from lorafleet.human_review.security import LoginLimiter
from lorafleet.human_review.settings import ReviewSettings
from pydantic import SecretStr, ValidationError
from sqlalchemy import select, update

from lorafleet.samples import MAX_TEXT_CHARS
from tests.unit.human_review.conftest import ADMIN_TOKEN, PASSWORD, add_queue, add_user, csrf_of, ingest, login
from tests.unit.human_review.pg import free_port

COOKIE = "lorafleet_review"


def _try(client: TestClient, name: str, password: str, xff: str | None = None) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    headers = {"X-Forwarded-For": xff} if xff else {}
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token}, headers=headers,
                       follow_redirects=False)


# --- the login limiter -------------------------------------------------------------------------------------

def test_repro_rotating_x_forwarded_for_does_not_dodge_the_login_limiter(tmp_path: Path) -> None:
    """`lorafleet review serve` itself, on loopback: 12 wrong guesses, each with another X-Forwarded-For,
    meet 429 before the right password gets in (uvicorn's default trusted X-Forwarded-For from 127.0.0.1)."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}  # defaults only
    env["LORAFLEET_DATA_DIR"] = str(data)
    subprocess.run([sys.executable, "-m", "lorafleet", "review", "users", "add", "ann", "--password-stdin"],
                   input=PASSWORD + "\n", text=True, env=env, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lorafleet", "review", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a cold start on a loaded CI machine takes a while
        while True:
            try:
                if httpx.get(url + "/login", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if proc.poll() is not None:
                pytest.fail(f"review serve exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("review serve did not answer in 120 s")
        with httpx.Client(base_url=url) as c:
            codes = []
            for i in range(12):
                token = csrf_of(c.get("/login").text)
                codes.append(c.post("/login", data={"name": "ann", "password": "wrong-guess", "csrf_token": token},
                                    headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}).status_code)
            token = csrf_of(c.get("/login").text)
            right = c.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": token},
                           headers={"X-Forwarded-For": "198.51.100.7"})
        assert 429 in codes, codes
        assert codes[:5] == [401] * 5
        assert right.status_code == 429
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "192.0.2.1"])
    assert forwarded_client("127.0.0.1", "203.0.113.9", proxies) == "127.0.0.1"  # loopback is not a proxy
    assert forwarded_client("10.1.2.3", "203.0.113.9", proxies) == "203.0.113.9"
    # the rightmost address not of a trusted proxy: what a client writes to the left is ignored
    assert forwarded_client("10.1.2.3", "1.1.1.1, 203.0.113.9, 192.0.2.1", proxies) == "203.0.113.9"
    assert forwarded_client("10.1.2.3", None, proxies) == "10.1.2.3"
    assert forwarded_client("10.1.2.3", "203.0.113.9", []) == "10.1.2.3"


def test_settings_refuse_a_trusted_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an IP address"):
        ReviewSettings(data_dir=tmp_path, review_trusted_proxies=["proxy.local"])
    assert ReviewSettings(data_dir=tmp_path, review_trusted_proxies="10.0.0.1, 10.2.0.0/16").review_trusted_proxies \
        == ["10.0.0.1", "10.2.0.0/16"]


def _app(review_settings: ReviewSettings, **changes: object):  # noqa: ANN202
    """The app with changed settings; its login limiter's clock stands still (no delay runs out mid-test)."""
    app = create_app(review_settings.model_copy(update=changes))
    frozen = time.monotonic()
    app.state.limiter.clock = lambda: frozen
    return app


def test_per_address_limit_holds_behind_a_trusted_proxy(review_settings, factory) -> None:  # noqa: ANN001
    """Behind a configured proxy each forwarded client has its own per-address limit."""
    add_user(factory, "ann")
    app = _app(review_settings, review_trusted_proxies=["10.0.0.0/8"])
    with TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 4000)) as c:
        codes = [_try(c, "ann", "wrong-guess", xff="203.0.113.5").status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        # another client behind the same proxy is not blocked by that one's failures
        assert _try(c, "ann", PASSWORD, xff="198.51.100.9").status_code == 303


def test_per_account_backoff_stops_a_guesser_with_many_addresses(review_settings, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    app = _app(review_settings, review_trusted_proxies=["10.0.0.0/8"])
    with TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 4000)) as c:
        codes = [_try(c, "ann", "wrong-guess", xff=f"203.0.113.{i + 1}").status_code for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        r = _try(c, "ann", PASSWORD, xff="198.51.100.7")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2


def test_a_hammered_account_does_not_lock_out_other_accounts(review_settings, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_user(factory, "ben")
    app = _app(review_settings, review_trusted_proxies=["10.0.0.0/8"])
    with TestClient(app, base_url="http://127.0.0.1", client=("10.0.0.2", 4000)) as c:
        for i in range(12):
            _try(c, "ann", "wrong-guess", xff=f"203.0.113.{i + 1}")
        assert _try(c, "ann", "wrong-guess", xff="203.0.113.1").status_code == 429
        assert _try(c, "ben", PASSWORD, xff="198.51.100.20").status_code == 303  # another address
        c.cookies.clear()
        assert _try(c, "ben", PASSWORD, xff="203.0.113.1").status_code == 303  # even the guesser's address


def test_account_backoff_doubles_is_capped_and_never_locks_the_owner_out() -> None:
    now = [1000.0]
    lim = LoginLimiter(5, 300, account_max_failures=3, account_max_delay_s=8, address_max_failures=10_000,
                       clock=lambda: now[0])
    for i in range(3):
        lim.failed(f"198.51.100.{i}", "Ann")
    assert lim.retry_after("192.0.2.77", "ann") == 1  # any address, any spelling of the name
    assert lim.retry_after("192.0.2.77", "ben") == 0  # other accounts: untouched
    waits = []
    for i in range(6):
        now[0] += 10  # the stranger waits out each delay and guesses again (all inside the window)
        lim.failed(f"203.0.113.{i}", "ann")
        waits.append(lim.retry_after("192.0.2.77", "ann"))
    assert waits == [2, 4, 8, 8, 8, 8]  # doubling, capped: the owner gets a try every 8 s at worst
    now[0] += 8
    assert lim.retry_after("192.0.2.77", "ann") == 0
    lim.succeeded("192.0.2.77", "ann")
    assert lim.retry_after("192.0.2.77", "ann") == 0


def test_one_address_spraying_many_accounts_is_limited() -> None:
    lim = LoginLimiter(5, 300, address_max_failures=20)
    for i in range(20):
        lim.failed("203.0.113.1", f"user{i}")
    assert lim.retry_after("203.0.113.1", "someone-else") > 0
    assert lim.retry_after("203.0.113.2", "someone-else") == 0


def test_repro_the_limiters_memory_is_bounded() -> None:
    now = [0.0]
    lim = LoginLimiter(5, 300, max_entries=100, clock=lambda: now[0])
    for i in range(20_000):
        lim.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"name-{i}")
    assert lim.entries() <= 300  # three tables of at most 100 keys, however many addresses and names
    lim.failed("203.0.113.1", "ann")
    assert lim._pair._log[("203.0.113.1", "ann")].maxlen == 5  # per key too: only the last few failures
    now[0] += 301
    lim.failed("203.0.113.2", "ben")  # the next failure drops everything expired
    assert lim.entries() == 3


# --- server-side sessions ----------------------------------------------------------------------------------

def _cookie_payload(client: TestClient) -> str:
    value = client.cookies[COOKIE]
    data = value.split(".")[0]
    return base64.b64decode(data + "=" * (-len(data) % 4)).decode()


def test_repro_a_cookie_saved_before_logout_is_refused_afterwards(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    csrf = login(client, "ann")
    saved = client.cookies[COOKIE]
    assert client.get("/", follow_redirects=False).status_code == 200
    client.post("/logout", data={"csrf_token": csrf})
    client.cookies.clear()
    client.cookies.set(COOKIE, saved)
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_repro_the_session_cookie_holds_no_password_hash_material(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    login(client, "ann")
    payload = _cookie_payload(client)
    with factory() as s:
        pw_hash = s.scalar(select(User.password_hash).where(User.name == "ann"))
    secret = "".join(pw_hash.split("$")[-2:])  # the salt and the hash itself
    assert not any(secret[i:i + 8] in payload for i in range(len(secret) - 7)), payload
    assert set(json.loads(payload)) == {"sid", "csrf"}
    with factory() as s:  # the server keeps only the session id's hash
        assert s.get(LoginSession, json.loads(payload)["sid"]) is None
        assert s.scalar(select(LoginSession.revoked_at)) is None


def test_idle_and_expired_sessions_end(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    login(client, "ann")
    assert client.get("/", follow_redirects=False).status_code == 200
    with db.session_scope(factory) as s:
        s.execute(update(LoginSession).values(last_seen=time.time() - 5 * 3600))  # idle past 4 h
    assert client.get("/", follow_redirects=False).status_code == 303
    login(client, "ann")
    with db.session_scope(factory) as s:
        s.execute(update(LoginSession).where(LoginSession.revoked_at.is_(None))
                  .values(expires_at=time.time() - 1))
    assert client.get("/", follow_redirects=False).status_code == 303


# --- request bodies ----------------------------------------------------------------------------------------

async def _asgi(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> tuple[int, int]:  # noqa: ANN001
    """Call the app over ASGI with a streamed body; returns (status, chunks the app asked for)."""
    asked = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        if asked > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[asked - 1], "more_body": asked < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8001)}
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), asked


def test_repro_an_oversized_body_without_a_token_is_refused_before_it_is_read(app) -> None:  # noqa: ANN001
    garbage = [b"x" * (1024 * 1024)] * 80  # 80 MB of garbage, streamed (no Content-Length)
    status, asked = asyncio.run(_asgi(app, "POST", "/api/v1/items", {"content-type": "application/json"}, garbage))
    assert status == 401 and asked == 0  # refused on the missing token before one chunk was read
    status, asked = asyncio.run(_asgi(app, "POST", "/api/v1/items", {"content-type": "application/json",
                                                                    "authorization": "Bearer rvq_wrong"}, garbage))
    assert status == 401 and asked == 0
    status, asked = asyncio.run(_asgi(app, "POST", "/api/v1/items", {"content-type": "application/json",
                                                                    "content-length": str(80 * 1024 * 1024)}, garbage))
    assert status == 413 and asked == 0  # Content-Length alone decides


def test_a_streamed_body_is_cut_off_at_the_limit(review_settings, factory) -> None:  # noqa: ANN001
    add_queue(factory, "q")
    app = _app(review_settings, review_max_body_bytes=4 * 1024 * 1024)
    chunks = [b"x" * (1024 * 1024)] * 80
    status, asked = asyncio.run(_asgi(app, "POST", "/api/v1/items", {"content-type": "application/json",
                                                                    "authorization": f"Bearer {ADMIN_TOKEN}"}, chunks))
    assert status == 413 and asked <= 5  # reading stopped at the limit, the rest was never asked for


def test_repro_an_80_mb_item_response_is_refused_with_413(client, factory) -> None:  # noqa: ANN001
    add_queue(factory, "q")
    body = json.dumps({"queue": "q", "items": [{"id": "big", "prompt": "p", "response": "a" * (80 * 1000 * 1000)}]})
    r = client.post("/api/v1/items", content=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                            "Content-Type": "application/json"})
    assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    stats = client.get("/api/v1/queues/q/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert stats["queue"]["items"] == 0


def test_each_text_field_is_capped(client, factory) -> None:  # noqa: ANN001
    add_queue(factory, "q")
    r = ingest(client, "q", [{"id": "long", "prompt": "p", "response": "a" * (MAX_TEXT_CHARS + 1)}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "items.0.response"
    r = ingest(client, "q", [{"id": "chat", "prompt": [{"role": "user", "content": "a" * 60_000}] * 2,
                              "response": "r"}])
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    assert ingest(client, "q", [{"id": "ok", "prompt": "p", "response": "a" * MAX_TEXT_CHARS}]).status_code == 200


def test_a_huge_login_form_is_refused_with_413(client) -> None:  # noqa: ANN001
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"name": "ann", "password": "x" * (3 * 1024 * 1024), "csrf_token": token})
    assert r.status_code == 413


# --- the database file ---------------------------------------------------------------------------------------

def test_repro_review_db_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        settings = ReviewSettings(data_dir=tmp_path / "data", review_admin_token=SecretStr(ADMIN_TOKEN))
        app = create_app(settings)
        with TestClient(app) as c:
            assert c.get("/login").status_code == 200
            path = tmp_path / "data" / "review.db"
            for p in (path, path.with_name("review.db-wal"), path.with_name("review.db-shm")):
                assert p.exists() and stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(old)


def test_an_older_0644_review_db_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect():
        pass
    engine.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_serve_runs_uvicorn_without_its_proxy_headers(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    from lorafleet.cli.main import main

    started: list[dict] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(kw))
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(tmp_path / "data"), "review", "serve", "--port", "8123"])
    assert info.value.code in (0, None)
    assert started[0]["proxy_headers"] is False and started[0]["forwarded_allow_ips"] == []
