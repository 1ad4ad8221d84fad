"""`adapters promote` and `adapters policy` from the command line: exit codes, listed evidence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.cli.main import main
from lorafleet.config import Settings
from lorafleet.registry import Registry
from tests.unit.promotion.helpers import link_run, register, write_run


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture
def dd(settings: Settings) -> str:
    return str(settings.data_dir)


def test_refused_promote_lists_each_item_exits_1_alias_untouched(capsys, registry: Registry, tmp_path: Path,
                                                                  dd: str) -> None:
    v = register(registry, tmp_path)
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "promote", f"intents@{v}", "--to", "prod")
    assert code == 1, err
    assert "✗ suites evaluated" in err and "✓ fidelity" in err and "✓ forgetting" in err
    assert "refused: 1 of" in err and "Traceback" not in err
    assert "prod" not in registry.aliases("intents")


def test_promote_prints_evidence_and_moves_the_alias(capsys, registry: Registry, tmp_path: Path, dd: str) -> None:
    v = register(registry, tmp_path)
    run_dir = write_run(tmp_path / "runs", "r1", "intents", {"a": [1.0] * 30}, passed={"a": True})
    link_run(registry, f"intents@{v}", run_dir, "a")
    code, out, err = run(capsys, "--data-dir", dd, "adapters", "promote", f"intents@{v}", "--to", "prod")
    assert code == 0, err
    assert "✓ suite intents: gates: all gates passed (run r1)" in out and "intents@prod → v1 (was unset)" in out
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "promote", f"intents@{v}", "--to", "staging", "--json")
    assert code == 0 and json.loads(out)["kind"] == "promoted"


@pytest.mark.parametrize("argv", [
    ("adapters", "promote", "intents@v9", "--to", "prod"),      # no such version
    ("adapters", "promote", "nobody@v1", "--to", "prod"),       # no such adapter
    ("adapters", "promote", "intents", "--to", "prod"),         # no version at all
    ("adapters", "promote", "intents@v1", "--to", "latest"),    # registry-managed alias
    ("adapters", "promote", "intents@v1", "--to", "prod", "--canary", "150"),
])
def test_repro_bad_promote_input_exits_2(capsys, registry: Registry, tmp_path: Path, dd: str, argv) -> None:
    register(registry, tmp_path)
    code, _, err = run(capsys, "--data-dir", dd, *argv)
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err
    assert "prod" not in registry.aliases("intents")


def test_repro_alias_naming_a_missing_version_exits_2(capsys, registry: Registry, tmp_path: Path, dd: str) -> None:
    register(registry, tmp_path)
    v2 = register(registry, tmp_path)
    registry.set_alias("intents", "prod", v2)
    registry.remove_alias("intents", "prod")
    # The alias file names a version that was removed behind the registry's back.
    aliases = registry.root / "intents" / "aliases.json"
    aliases.write_text(json.dumps({"latest": "v2", "prod": "v7"}))
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v2", "--to", "prod", "--force",
                       "--reason", "x")
    assert code == 2 and "intents@prod names v7, which does not exist" in err
    assert json.loads(aliases.read_text())["prod"] == "v7"


@pytest.mark.parametrize(("yaml_text", "needle"), [
    ("suites:\n  required: [a]\n  min_suite: 2\n", "policy.yaml:3: suites.min_suite: unknown key"),
    ("fidelity: true\nforgetting: maybe\n", "policy.yaml:2: forgetting: Input should be a valid boolean"),
    ("paired_gain:\n  min_pairs: many\n", "policy.yaml:2: paired_gain.min_pairs: Input should be a valid integer"),
    ("review: {min_graded: 20,\n  min_mean: high}\n", "policy.yaml:2: review.min_mean"),
    ("suites: [\n", "policy.yaml:2: invalid YAML"),
])
def test_repro_bad_policy_yaml_names_file_and_line(capsys, registry: Registry, tmp_path: Path, dd: str,
                                                   yaml_text: str, needle: str) -> None:
    register(registry, tmp_path)
    bad = tmp_path / "policy.yaml"
    bad.write_text(yaml_text)
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "policy", "intents", "--set", str(bad))
    assert code == 2, err
    assert needle in err.replace("\n", " "), err
    assert not (registry.root / "intents" / "policy.yaml").exists()  # nothing written
    # the same file put there by hand: promote names it too
    (registry.root / "intents" / "policy.yaml").write_text(yaml_text)
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v1", "--to", "prod")
    assert code == 2 and str(registry.root / "intents" / "policy.yaml") in err.replace("\n", "")


def test_policy_set_and_show(capsys, registry: Registry, tmp_path: Path, dd: str) -> None:
    register(registry, tmp_path)
    code, out, err = run(capsys, "--data-dir", dd, "adapters", "policy", "intents")
    assert code == 0 and "default" in err and "paired_gain:" in out
    good = tmp_path / "p.yaml"
    good.write_text("review: {min_graded: 10, min_mean: 3}\nforgetting: false\n")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "policy", "intents", "--set", str(good))
    assert code == 0, err
    code, out, _ = run(capsys, "--data-dir", dd, "adapters", "policy", "intents", "--show", "--json")
    data = json.loads(out)
    assert data["policy"]["review"]["min_mean"] == 3.0 and data["policy"]["forgetting"] is False
    assert data["source"].endswith("intents/policy.yaml")
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "policy", "nobody")
    assert code == 2 and "no adapter named 'nobody'" in err


def test_who_is_the_admin_keys_name_or_the_os_user(capsys, registry: Registry, tmp_path: Path, dd: str) -> None:
    import getpass

    register(registry, tmp_path)
    code, out, err = run(capsys, "--data-dir", dd, "keys", "create", "--name", "ops", "--admin", "--json")
    assert code == 0, err
    key = json.loads(out)["key"]
    code, out, _ = run(capsys, "--data-dir", dd, "keys", "create", "--name", "app", "--json")
    app_key = json.loads(out)["key"]
    run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v1", "--to", "prod", "--force", "--reason", "r",
        "--admin-key", key)
    run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v1", "--to", "staging", "--force", "--reason", "r")
    who = [d["who"] for d in registry.card("intents", "v1").decisions]
    assert who == ["key:ops", getpass.getuser()]
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v1", "--to", "x", "--force",
                       "--reason", "r", "--admin-key", "lf-not-a-key")
    assert code == 2 and "not a valid admin key" in err
    code, _, err = run(capsys, "--data-dir", dd, "adapters", "promote", "intents@v1", "--to", "x", "--force",
                       "--reason", "r", "--admin-key", app_key)  # a key, but not an admin one
    assert code == 2 and "not a valid admin key" in err and "x" not in registry.aliases("intents")
