"""Bad input to `lorafleet train`: one clear line naming file:line or the flag, exit 2, no traceback,
nothing registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.train.helpers import chat, intent, run_cli, write_jsonl

GOOD = [intent(f"my parcel number {i} is late", "shipping") for i in range(4)]


@pytest.fixture
def val(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "val.jsonl", [intent("refund for my lamp please", "refund")])


def _train(capsys, tmp_path: Path, base: Path, train: Path, val: Path | None, *extra: str) -> tuple[int, str]:
    args = ["--data-dir", str(tmp_path / "data"), "train", "--base", str(base), "--train", str(train),
            "--name", "bad", "--max-steps", "1", "--no-track", *extra]
    if val is not None:
        args += ["--val", str(val)]
    code, _, err = run_cli(capsys, *args)
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "registry" / "bad").exists()
    return code, " ".join(err.split())


@pytest.mark.parametrize(("rows", "expected"), [
    (GOOD[:2] + ['{"messages": [{"role": "user"'], "train.jsonl:3: invalid JSON"),
    (GOOD[:1] + [{"instruction": "classify this"}], "train.jsonl:2: field 'output'"),
    ([chat("hi", "x")] + [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
     "train.jsonl:2: field 'messages': message 2 has role 'user', expected 'assistant'"),
    (GOOD[:1] + [chat("cancel my order", "   ")], "train.jsonl:2: field 'messages.1.content': message 2"),
    (GOOD[:2] + [intent("refund now", "Refund."), intent("refund pls", "refund")], "label variants"),
])
def test_bad_records(capsys, tmp_path: Path, tiny_model: Path, rows: list, expected: str) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code, err = _train(capsys, tmp_path, tiny_model, train, None)
    assert code == 2 and expected in err, err


def test_leakage_refused_unless_allowed(capsys, tmp_path: Path, tiny_model: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD + [intent("refund for my lamp please", "refund")])
    val = write_jsonl(tmp_path / "val.jsonl", [intent("refund for my lamp please", "refund")])
    code, err = _train(capsys, tmp_path, tiny_model, train, val)
    assert code == 2 and "val.jsonl:1 also appears in the training data at" in err and "--allow-leakage" in err


def test_overlong_error_names_the_flag(capsys, tmp_path: Path, tiny_model: Path, val: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD + [intent("word " * 80, "shipping")])
    code, err = _train(capsys, tmp_path, tiny_model, train, val, "--max-length", "80", "--on-overlong", "error")
    assert code == 2 and "train.jsonl:5" in err and "--max-length 80" in err


def test_base_that_is_not_a_causal_lm(capsys, tmp_path: Path, val: Path) -> None:
    base = tmp_path / "encoder"
    base.mkdir()
    (base / "config.json").write_text('{"architectures": ["BertModel"]}')
    code, err = _train(capsys, tmp_path, base, write_jsonl(tmp_path / "train.jsonl", GOOD), val)
    assert code == 2 and "BertModel" in err and "causal" in err


def test_unknown_target_modules(capsys, tmp_path: Path, tiny_model: Path, val: Path) -> None:
    code, err = _train(capsys, tmp_path, tiny_model, write_jsonl(tmp_path / "train.jsonl", GOOD), val,
                       "--target-modules", "q_proj,query_key_value")
    assert code == 2 and "--target-modules" in err and "query_key_value" in err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--rank", "12"], "--rank: rank 12 cannot be served by vLLM"),
    (["--rank", "64"], "--rank: rank 64 cannot be served"),
    (["--on-overlong", "skip"], "--on-overlong"),
    (["--lr", "-1"], "--lr"),
])
def test_bad_flags(capsys, tmp_path: Path, tiny_model: Path, val: Path, flags: list[str], expected: str) -> None:
    code, err = _train(capsys, tmp_path, tiny_model, write_jsonl(tmp_path / "train.jsonl", GOOD), val, *flags)
    assert code == 2 and expected in err


def test_missing_flags_and_bad_config(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--name", "x")
    assert code == 2 and "--train" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ntrain: t.jsonl\nlearning_rate: 1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(cfg))
    assert code == 2 and "c.yaml: field 'learning_rate'" in " ".join(err.split())


def test_resume_without_checkpoint(capsys, tmp_path: Path, tiny_model: Path, val: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    code, err = _train(capsys, tmp_path, tiny_model, train, val, "--resume")
    assert code == 2 and "--resume: no earlier run of 'bad'" in err and "without --resume" in err
    from lorafleet.train import runs
    from lorafleet.train.config import TrainConfig

    # A run that stopped before its first checkpoint: nothing to continue from.
    config = TrainConfig(name="bad", train=train, val=val, base=tiny_model, max_steps=1, track=False)
    run_dir = runs.create_run(tmp_path / "data" / "runs", config, runs.new_run_id())
    code, err = _train(capsys, tmp_path, tiny_model, train, val, "--resume")
    assert code == 2 and f"--resume: run {run_dir.name} of 'bad' has no checkpoint" in err
