"""`lorafleet keys …` and `lorafleet serve` argument errors, through the real entry point."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from lorafleet.serve.keys import KeyStore, allows, hash_key

from lorafleet.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_keys_create_list_revoke(capsys, tmp_path: Path) -> None:
    dd = str(tmp_path / "data")
    code, out, err = run(capsys, "--data-dir", dd, "keys", "create", "--name", "app1",
                         "--adapters", "support-*,clauses@prod", "--rpm", "60", "--json")
    assert code == 0, err
    created = json.loads(out)
    key = created["key"]
    assert key.startswith("lf-") and created["adapters"] == ["support-*", "clauses@prod"]
    with sqlite3.connect(tmp_path / "data" / "lorafleet.db") as conn:
        stored = conn.execute("SELECT * FROM serve_api_keys").fetchall()
    assert key not in repr(stored) and hash_key(key) in repr(stored)  # stored hashed only
    store = KeyStore(f"sqlite:///{tmp_path / 'data' / 'lorafleet.db'}")
    assert store.verify(key).rpm == 60
    code, out, _ = run(capsys, "--data-dir", dd, "keys", "list", "--json")
    rows = json.loads(out)
    assert [(r["name"], r["revoked"]) for r in rows] == [("app1", False)] and key not in out
    code, _, err = run(capsys, "--data-dir", dd, "keys", "create", "--name", "app1")
    assert code == 2 and "exists" in err
    code, _, _ = run(capsys, "--data-dir", dd, "keys", "revoke", "app1")
    assert code == 0 and store.verify(key) is None
    code, _, err = run(capsys, "--data-dir", dd, "keys", "revoke", "nobody")
    assert code == 2 and "no key named" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "needle"), [
    (["keys", "create", "--name", "x", "--adapters", " , "], "no adapter patterns"),
    (["keys", "create", "--name", "x", "--rpm", "0"], "--rpm"),
    (["serve", "--no-auth", "--host", "0.0.0.0", "--upstream", "http://127.0.0.1:1"], "loopback"),
    (["serve", "--capture", "pirate=lots", "--upstream", "http://127.0.0.1:1"], "NAME=RATE"),
    (["serve", "--capture", "pirate=0.5", "--upstream", "http://127.0.0.1:1"], "review URL"),
    (["serve", "--capture", "pirate=2", "--review-url", "http://r", "--upstream", "http://x"], "capture"),
    (["serve", "--base", "{tmp}"], "no base model here"),
    # grouped settings still name the flag: vllm.max_loras / routing.hot_set are --max-loras / --hot-set
    (["serve", "--max-loras", "0", "--upstream", "http://x"], "setting 'max_loras'"),
    (["serve", "--hot-set", "0", "--upstream", "http://x"], "check --hot-set"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path: Path, args: list[str], needle: str) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), *argv)
    assert code == 2, err
    assert err.startswith("error:") and needle in err and "Traceback" not in err


@pytest.mark.parametrize(("patterns", "ref", "ok"), [
    (("support-*",), "support-intents", True),
    (("support-*",), "support-intents@v3", True),
    (("support-*",), "clauses", False),
    (("clauses@prod",), "clauses@prod", True),
    (("clauses@prod",), "clauses@v1", False),
    (("clauses@prod",), "clauses", False),
    (("clauses@latest",), "clauses", True),
    (("clauses@v*",), "clauses@v2", True),
    (("*",), "anything@canary", True),
])
def test_scope_patterns(patterns, ref, ok) -> None:
    assert allows(patterns, ref) is ok


@pytest.mark.parametrize(("queues", "token", "needles"), [
    (set(), "tok", ["capture queue 'capture' does not exist", "HTTP 404", "lorafleet review queues create capture"]),
    ({"capture"}, "rotated", ["review token is missing, wrong or rotated", "HTTP 401", "rotate the token"]),
])
def test_serve_capture_checks_queue_and_token_at_start(capsys, monkeypatch, tmp_path: Path, queues, token,
                                                        needles) -> None:
    from tests.fakes.review_server import ReviewState, review_server

    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    with review_server(ReviewState(token="tok", queues=queues)) as review:
        code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "serve", "--upstream", "http://127.0.0.1:1",
                           "--capture", "pirate=0.5", "--review-url", review.url, "--review-token", token)
    assert code == 2 and not started, err
    assert err.startswith("error: --capture:") and "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_serve_capture_starts_when_the_queue_is_there_and_warns_when_the_app_is_down(capsys, monkeypatch,
                                                                                      tmp_path: Path) -> None:
    from tests.fakes.review_server import ReviewState, review_server

    started: list[object] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    (tmp_path / "data").mkdir()
    argv = ["--data-dir", str(tmp_path / "data"), "serve", "--upstream", "http://127.0.0.1:1",
            "--capture", "pirate=0.5", "--review-token", "tok"]
    with review_server(ReviewState(token="tok", queues={"live-capture"})) as review:
        code, _, err = run(capsys, *argv, "--review-url", review.url)  # the default queue, capture, is missing
        assert code == 2 and not started and "capture queue 'capture' does not exist" in err
        code, _, err = run(capsys, *argv, "--review-url", review.url, "--review-queue", "live-capture")
    assert code == 0 and len(started) == 1 and "warning" not in err, err
    assert review.state.requests[-1] == ("GET", "/api/v1/queues/live-capture")
    code, _, err = run(capsys, *argv, "--review-url", "http://127.0.0.1:9")
    assert code == 0 and len(started) == 2, err
    assert "unreachable" in err and "capture-spool.jsonl" in err
