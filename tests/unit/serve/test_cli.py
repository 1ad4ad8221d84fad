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
