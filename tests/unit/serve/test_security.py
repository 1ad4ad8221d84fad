"""Nothing exposed (issue 18 §4): auth before bodies, body limits everywhere, deep JSON, /metrics,
unknown-key sprays."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from lorafleet.serve.auth import Authenticator
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore
from pydantic import SecretStr

from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import Harness, gateway_on_loopback, running

MB = 1_000_000


def _raw_request(url: str, head: str, chunks: int, chunk: bytes) -> tuple[bytes, int]:
    """Send `head` then up to `chunks` chunked-encoding chunks; stop once the server answers or
    closes. Returns (what the server sent, bytes of body sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode())
    sent = 0
    sock.setblocking(False)
    received = b""
    try:
        for _ in range(chunks):
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            try:
                got = sock.recv(65536)
                if got:
                    received += got
                    break
            except BlockingIOError:
                pass
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in received:
                got = sock.recv(65536)
                if not got:
                    break
                received += got
        except (ConnectionResetError, TimeoutError):
            pass
    finally:
        sock.close()
    return received, sent


def _chunked_head(path: str, key: str | None = None) -> str:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{auth}"
            "Transfer-Encoding: chunked\r\n\r\n")


def test_repro_admin_body_not_read_before_auth(serve_settings: ServeSettings, fake: FakeUpstream,
                                               key_store: KeyStore, gw_registry) -> None:
    """A 200 MB body to /admin/adapters/load without a key: 401 after the first chunk, body unread."""
    with fake.serve() as upstream, gateway_on_loopback(serve_settings, upstream, fake.api_key, key_store) as (
            url, _admin, state):
        reads = []
        original = state.auth.require_admin

        async def spy(*args, **kwargs):
            reads.append(time.monotonic())
            return await original(*args, **kwargs)

        state.auth.require_admin = spy
        start = time.monotonic()
        answer, sent = _raw_request(url, _chunked_head("/admin/adapters/load"), chunks=200, chunk=b"[" * MB)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"invalid_api_key" in answer
    assert sent < 50 * MB  # the server answered (and stopped reading) long before 200 MB
    assert took < 10
    assert reads  # the key was checked (by the guard, before any route)


def test_repro_admin_large_body_with_key_is_413_at_limit(serve_settings: ServeSettings, fake: FakeUpstream,
                                                         key_store: KeyStore, gw_registry) -> None:
    """The body limit holds on /admin/* too (it applied to the OpenAI routes only), chunked or not."""
    with fake.serve() as upstream, gateway_on_loopback(serve_settings, upstream, fake.api_key, key_store) as (
            url, admin, _state):
        answer, sent = _raw_request(url, _chunked_head("/admin/adapters/load", admin), chunks=100,
                                    chunk=b" " * MB)
        declared = httpx.post(f"{url}/admin/adapters/load", content=b" " * (serve_settings.auth.max_body_bytes + 1),
                              headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer
    assert sent < 20 * MB
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"


async def test_repro_deeply_nested_json_is_400(gw: Harness) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        resp = await gw.client.post(path, content=b"[" * 200_000, headers={"Authorization": f"Bearer {gw.admin}"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_json"
    resp = await gw.client.post("/admin/adapters/load", content=b"[" * 200_000,
                                headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 400


async def test_admin_without_key_is_401_and_non_admin_403(gw: Harness) -> None:
    resp = await gw.client.post("/admin/adapters/load", json={"model": "pirate"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    resp = await gw.client.post("/admin/adapters/load", json={"model": "pirate"},
                                headers={"Authorization": f"Bearer {gw.key()}"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_only"
    resp = await gw.client.post("/admin/adapters/load", json={"model": "pirate"},
                                headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 200, resp.text


@pytest.fixture
def exposed(serve_settings: ServeSettings) -> ServeSettings:
    """Settings of a gateway reachable from other hosts."""
    return serve_settings.updated(**{"host": "0.0.0.0"})  # noqa: S104 - the point of the test


async def test_repro_metrics_not_exposed_on_public_host(exposed: ServeSettings, fake: FakeUpstream,
                                                        key_store: KeyStore, gw_registry) -> None:
    async with running(exposed, fake, key_store) as gw:
        anonymous = await gw.client.get("/metrics")
        user = await gw.client.get("/metrics", headers={"Authorization": f"Bearer {gw.key()}"})
        admin = await gw.client.get("/metrics", headers={"Authorization": f"Bearer {gw.admin}"})
    assert anonymous.status_code == 401
    assert "support-intents" not in anonymous.text and "lorafleet_" not in anonymous.text
    assert user.status_code == 403
    assert admin.status_code == 200 and "lorafleet_requests_total" in admin.text


async def test_metrics_token(exposed: ServeSettings, fake: FakeUpstream, key_store: KeyStore, gw_registry) -> None:
    settings = exposed.updated(**{"metrics_token": SecretStr("scrape-me")})
    async with running(settings, fake, key_store) as gw:
        good = await gw.client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        bad = await gw.client.get("/metrics", headers={"Authorization": "Bearer scrape-you"})
        none = await gw.client.get("/metrics")
    assert good.status_code == 200 and "lorafleet_requests_total" in good.text
    assert bad.status_code == 401 and none.status_code == 401
    assert bad.json()["error"]["type"] == "authentication_error"


async def test_metrics_open_on_loopback_without_token(gw: Harness) -> None:
    assert (await gw.client.get("/metrics")).status_code == 200


class CountingStore:
    """A key store that records each query and the thread it ran on."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.threads: list[int] = []

    def verify(self, plaintext: str):
        self.threads.append(threading.get_ident())
        return self.store.verify(plaintext)


async def test_unknown_keys_are_looked_up_off_the_loop_and_negative_cached(tmp_path: Path) -> None:
    store = CountingStore(KeyStore(f"sqlite:///{tmp_path / 'keys.db'}"))
    auth = Authenticator(store, ttl=60)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(Exception, match="invalid or revoked"):
            await auth.authenticate("Bearer lf-not-a-key", "10.0.0.1")
    assert len(store.threads) == 1  # the second and third came from the negative cache
    assert store.threads[0] != threading.get_ident()  # a worker thread, not the event loop's
    with pytest.raises(Exception, match="invalid or revoked"):
        await auth.authenticate("Bearer sk-no-prefix", "10.0.0.1")
    assert len(store.threads) == 1  # not one of ours: no query at all


async def test_unknown_key_spray_is_rate_limited_per_address(tmp_path: Path) -> None:
    store = CountingStore(KeyStore(f"sqlite:///{tmp_path / 'keys.db'}"))
    _, good = store.store.create(name="good")
    auth = Authenticator(store, ttl=0, failed_lookups_per_minute=5)  # type: ignore[arg-type]
    statuses = []
    for i in range(8):
        try:
            await auth.authenticate(f"Bearer lf-spray-{i}", "10.0.0.1")
        except Exception as exc:  # noqa: BLE001 - ApiError, status checked below
            statuses.append(exc.status)  # type: ignore[attr-defined]
    assert statuses == [401] * 5 + [429] * 3
    assert len(store.threads) == 5  # the refused ones cost no query
    with pytest.raises(Exception, match="invalid or revoked"):  # another address has its own budget
        await auth.authenticate("Bearer lf-spray-x", "10.0.0.2")
    assert (await auth.authenticate(f"Bearer {good}", "10.0.0.3")).name == "good"


async def test_unknown_key_spray_gets_openai_shaped_429(serve_settings: ServeSettings, fake: FakeUpstream,
                                                        key_store: KeyStore, gw_registry) -> None:
    settings = serve_settings.updated(**{"failed_key_lookups_per_minute": 2, "key_cache_ttl": 60})
    async with running(settings, fake, key_store) as gw:
        assert (await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.admin}"})).status_code == 200
        answers = [await gw.client.get("/v1/models", headers={"Authorization": f"Bearer lf-random-{i}"})
                   for i in range(3)]
        still_fine = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.admin}"})
    assert [a.status_code for a in answers] == [401, 401, 429]
    error = answers[2].json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert int(answers[2].headers["retry-after"]) >= 1
    assert still_fine.status_code == 200  # a key already verified keeps working during the spray


async def test_adapter_load_error_hides_paths_and_vllm_internals(gw: Harness, caplog) -> None:
    gw.fake.fail_loads = True
    resp = await gw.chat("pirate")
    assert resp.status_code == 502
    message = resp.json()["error"]["message"]
    registry_dir = str(gw.state.settings.registry_dir)
    assert registry_dir not in message and "cannot load" not in message
    assert "pirate" in message
    assert any("cannot load" in r.getMessage() for r in caplog.records)  # the full error is logged


def test_nothing_refers_to_design_md() -> None:
    repo = Path(__file__).resolve().parents[3]
    needle = "DESIGN" + ".md"
    hits = []
    for folder in ("lorafleet", "serve", "train", "evaluate", "human_review", "tests", "docs", "deploy",
                   "scripts", "examples", "benchmarks"):
        root = repo / folder
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".html", ""}:
                try:
                    if needle in path.read_text(errors="ignore"):
                        hits.append(str(path.relative_to(repo)))
                except OSError:
                    pass
    for top in ("README.md", "Makefile", "pyproject.toml"):
        if needle in (repo / top).read_text():
            hits.append(top)
    assert not hits, hits
