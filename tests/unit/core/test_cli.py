"""The CLI: groups exist, user errors are one clear line with exit 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.cli.main import main
from tests.unit.core.peft_files import write_fake_peft


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error:"), err
    for needle in needles:
        assert needle in err, err


def test_help_lists_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for group in ("base", "data", "train", "adapters", "serve", "eval", "review", "keys"):
        assert group in out


def test_import_list_show_alias_rm(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    peft = write_fake_peft(tmp_path / "peft")
    dd = str(tmp_path / "data")
    for _ in range(2):
        code, out, err = run(capsys, "--data-dir", dd, "adapters", "import", str(peft), "--name", "intents",
                             "--skip-fidelity")
        assert code == 0, err
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "canary", "v1=0.9", "v2=0.1")
    assert code == 0
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "list", "--json")
    rows = json.loads(out)
    assert [(r["version"], r["aliases"]) for r in rows] == [("v1", ["canary"]), ("v2", ["canary", "latest"])]
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "show", "intents@v1", "--json")
    assert json.loads(out)["source"] == "imported"
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "rm", "intents@v1")
    assert_clean_error(code, err, "canary")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "canary", "v1=0.5", "v2=0.4")
    assert_clean_error(code, err, "sum to 0.9")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "rm", "intents", "--all")
    assert_clean_error(code, err, "canary", "--delete")


def test_alias_delete_then_rm_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    peft = write_fake_peft(tmp_path / "peft")
    dd = str(tmp_path / "data")
    for _ in range(2):
        assert run(capsys, "--data-dir", dd, "adapters", "import", str(peft), "--name", "intents",
                   "--skip-fidelity")[0] == 0
    assert run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "prod", "v1")[0] == 0
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "rm", "intents", "--all")
    assert_clean_error(code, err, "'prod'", "adapters alias intents prod --delete")
    code, out, err = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "prod", "--delete")
    assert code == 0, err
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "list", "--json")
    assert [r["aliases"] for r in json.loads(out)] == [[], ["latest"]]
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "prod", "--delete")
    assert_clean_error(code, err, "no alias 'prod'")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "latest", "--delete")
    assert_clean_error(code, err, "latest")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "alias", "intents", "prod")
    assert_clean_error(code, err, "no version given")
    code, out, err = run(capsys, "--data-dir", dd, "adapters", "rm", "intents", "--all")
    assert code == 0, err


@pytest.mark.parametrize("args, needles", [
    (["adapters", "show", "../etc"], ["invalid adapter name"]),
    (["adapters", "show", "nope@v1"], ["no adapter named 'nope'"]),
    (["adapters", "alias", "nope", "prod", "v1"], ["no adapter named"]),
    (["adapters", "import", "{tmp}", "--name", "x"], ["not a PEFT adapter folder"]),
    (["adapters", "import", "{tmp}/missing", "--name", "x"], ["not a folder"]),
    (["adapters", "import", "{peft}", "--name", "Bad/Name"], ["invalid adapter name"]),
    (["adapters", "import", "{peft12}", "--name", "x"], ["rank 12"]),
    (["adapters", "import", "{dora}", "--name", "x"], ["DoRA"]),
    (["base", "info", "--base", "{tmp}"], ["no config.json"]),
])
def test_bad_input_is_one_clear_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     args: list[str], needles: list[str]) -> None:
    paths = {
        "tmp": str(tmp_path),
        "peft": str(write_fake_peft(tmp_path / "peft")),
        "peft12": str(write_fake_peft(tmp_path / "peft12", rank=12)),
        "dora": str(write_fake_peft(tmp_path / "dora", config={"use_dora": True})),
    }
    argv = [a.format(**paths) for a in args]
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), *argv)
    assert_clean_error(code, err, *needles)
    registry = tmp_path / "data" / "registry"
    leftovers = [p for p in registry.rglob("*") if p.is_dir() and p.name.startswith(("v", ".tmp"))] \
        if registry.exists() else []
    assert leftovers == []


def test_corrupt_safetensors_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    peft = write_fake_peft(tmp_path / "peft")
    (peft / "adapter_model.safetensors").write_bytes(b"\xff" * 20)
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "adapters", "import", str(peft), "--name", "x")
    assert_clean_error(code, err, "not a readable safetensors file")


def test_bad_setting_from_env(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_ENGINE", "tpu")
    code, _, err = run(capsys, "adapters", "list")
    assert_clean_error(code, err, "engine", "LORAFLEET_ENGINE")


@pytest.mark.parametrize("argv, says", [
    (["data", "split", "x.jsonl", "--outt", "y"], "No such option: --outt"),
    (["nosuch"], "No such command 'nosuch'"),
    (["train", "--rank", "sixteen"], "Invalid value for '--rank'"),
])
def test_usage_errors_are_one_message_and_exit_2_never_a_traceback(argv: list[str], says: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
