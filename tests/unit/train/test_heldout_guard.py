"""The held-out guard in `lorafleet train`: a training record that matches a held-out example (val/test
files, eval suites' datasets, review items from eval runs) is refused before any model is loaded,
one line per record, exit 1; --allow-held-out trains anyway and the card records the check."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.errors import RegistryError
from lorafleet.heldout import HeldOutIndex
from lorafleet.registry import Registry
from tests.unit.train.helpers import chat, intent, run_cli, write_jsonl

NO_MODEL = "no-such-base"  # the refusals must come before the base is even looked at


def clean_rows(n: int = 4) -> list[dict]:
    return [intent(f"where is my parcel number {i} from the spring sale?", "shipping") for i in range(n)]


def test_repro_review_export_of_eval_items_refused_at_train_time(capsys, tmp_path: Path) -> None:
    """Reproduction 2, train-time half: `review export --format training` wrote corrections of items an
    eval run pushed (prompts from a test split); the next `train` must refuse them."""
    data_dir = tmp_path / "data"
    test_split = write_jsonl(tmp_path / "suite" / "test.jsonl", [
        intent("I was charged twice for my subscription this month", "billing"),
        intent("the blender I ordered arrived broken, I want my money back", "refund"),
    ])
    HeldOutIndex(data_dir).add_file(test_split, "eval", label="suite x")  # what `eval run` registers
    # The export: the suite's system prompt added and the reviewer's corrected answer; the prompt is the test's.
    exported = chat("the blender I ordered arrived broken, I want my money back", "[Intent: refund] Corrected.")
    exported["messages"].insert(0, {"role": "system", "content": "Classify the support intent."})
    train = write_jsonl(tmp_path / "train.jsonl", [*clean_rows(), exported])

    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tmp_path / NO_MODEL),
                              "--train", str(train), "--name", "next-intents")
    assert code == 1, err
    flat = " ".join(err.split())
    assert f"{train}:5: matches held-out eval {test_split}:2 (suite x) (exact, 1.00)" in flat
    assert "--allow-held-out" in flat and "Traceback" not in err
    assert not (data_dir / "runs").exists() and not (data_dir / "registry").exists()  # nothing started


def test_near_duplicates_refused_one_line_each_and_a_runs_val_is_held_out_for_other_runs(
        capsys, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    val = write_jsonl(tmp_path / "a" / "val.jsonl", [
        intent("hello, I ordered the water bottle by mistake, cancel it", "cancel"),
        intent("my invoice shows a charge I do not recognise at all", "billing"),
    ])
    train_a = write_jsonl(tmp_path / "a" / "train.jsonl", clean_rows())
    # Run A passes the guard (its base is missing, so it stops right after): its --val joins the index.
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tmp_path / NO_MODEL),
                              "--train", str(train_a), "--val", str(val), "--name", "a")
    assert code == 2 and "held-out" not in err, err
    roles = {(Path(s.abspath), s.role) for s in HeldOutIndex(data_dir).sources().files}
    assert (val.resolve(), "val") in roles

    train_b = write_jsonl(tmp_path / "b" / "train.jsonl", [
        *clean_rows(),
        intent("Hello, I ordered the water bottle by mistake, cancel it. Thanks!", "cancel"),  # near
        intent("My invoice shows a charge I do not recognise at all.", "billing"),  # exact once normalised
    ])
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tmp_path / NO_MODEL),
                              "--train", str(train_b), "--name", "b")
    assert code == 1, err
    flat = " ".join(err.split())
    assert "2 record(s) would bring held-out examples into training" in flat
    assert f"{train_b}:5: matches held-out val {val}:1 (val of a) (near," in flat
    assert f"{train_b}:6: matches held-out val {val}:2 (val of a) (exact, 1.00)" in flat


def test_train_val_overlap_stays_allow_leakages_and_the_train_file_is_never_its_own_match(
        capsys, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rows = clean_rows()
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", [rows[0], intent("refund my lamp please", "refund")])
    base = ["--data-dir", str(data_dir), "train", "--base", str(tmp_path / NO_MODEL), "--name", "t"]
    code, _out, err = run_cli(capsys, *base, "--train", str(train), "--val", str(val))
    assert code == 2 and "(leakage)" in err and "--allow-leakage" in err, err  # as before the guard
    code, _out, err = run_cli(capsys, *base, "--train", str(train), "--val", str(val), "--allow-leakage")
    assert code == 2 and "held-out" not in err and "base" in err.lower(), err  # past the guard, at the base

    # ... but for a later run that does not name it as its --val, that val file is held out like any other.
    code, _out, err = run_cli(capsys, *base, "--train", str(train))
    assert code == 1 and f"{train}:1: matches held-out val {val}:1 (val of t)" in " ".join(err.split()), err

    other = tmp_path / "other-data"
    HeldOutIndex(other).add_file(train, "test")  # e.g. once registered as a test split by mistake
    code, _out, err = run_cli(capsys, "--data-dir", str(other), *base[2:], "--train", str(train))
    assert code == 2 and "held-out" not in err, err


def test_allow_held_out_trains_and_the_card_records_the_check(capsys, tiny_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    test_split = write_jsonl(tmp_path / "test.jsonl", [intent("refund my broken lamp from last week", "refund")])
    HeldOutIndex(data_dir).add_file(test_split, "test")
    train = write_jsonl(tmp_path / "train.jsonl", [*clean_rows(), intent("refund my broken lamp from last week",
                                                                          "refund")])
    # MLFLOW_TRACKING_URI (a tracking server in real use) is honoured: the run goes there, not to data_dir.
    store = tmp_path / "server" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    code, _out, err = run_cli(capsys, "--data-dir", str(data_dir), "train", "--base", str(tiny_model),
                              "--train", str(train), "--name", "leaky", "--rank", "8", "--max-steps", "1",
                              "--batch-size", "2", "--samples", "0", "--allow-held-out",
                              "--skip-fidelity", "--json")
    assert code == 0, err
    assert "1 training record(s) match held-out examples" in " ".join(err.split())
    registry = Registry(data_dir / "registry")
    card = registry.resolve("leaky").card
    assert card.held_out == {"index_version": HeldOutIndex(data_dir).version(), "matches": 1, "allowed": True,
                             "threshold": 0.8,
                             "found": [f"{train}:5: matches held-out test {test_split}:1 (exact, 1.00)"]}
    assert card.training["allow_held_out"] is True
    with pytest.raises(RegistryError, match="immutable"):
        registry.update_card("leaky@v1", held_out={})

    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=f"sqlite:///{store}").get_run(card.mlflow_run_id).info.status == "FINISHED"
    assert not (data_dir / "mlflow").exists()
