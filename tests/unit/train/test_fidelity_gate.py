"""`lorafleet train` runs the fidelity check between saving and registering (fake engine and reference here;
the real ones: tests/integration/test_fidelity_real.py): a failure registers nothing, --force records it."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.unit.core.test_fidelity import FakeEngine
from tests.unit.train.helpers import intent, run_cli, write_jsonl


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    rows = [intent(f"where is my parcel number {i}?", "shipping") for i in range(4)]
    return (write_jsonl(tmp_path / "train.jsonl", rows),
            write_jsonl(tmp_path / "val.jsonl", [intent("my order has not arrived", "shipping")]))


def fake_engine(monkeypatch: pytest.MonkeyPatch, engine_logprobs: list[float]) -> list[tuple]:
    """Engine tokens [11, 12, 13] with `engine_logprobs`; the reference says -0.1 each. Returns the probes seen."""
    seen: list[tuple] = []

    @contextmanager
    def session(*a, **k):
        yield FakeEngine(engine_logprobs)

    def reference(base, adapter, seqs):
        seen.extend(seqs)
        return [([-0.1] * len(g), list(g)) for _, g in seqs]

    monkeypatch.setattr("lorafleet.cli.fidelity.engine_session", session)
    monkeypatch.setattr("lorafleet.cli.engine_session.engine_session", session)  # train_checks' shared session
    monkeypatch.setattr("lorafleet.train.fidelity.reference_logprobs", reference)
    return seen


def train_args(tiny_model: Path, data: tuple[Path, Path], data_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "train", "--base", str(tiny_model), "--train", str(data[0]),
            "--val", str(data[1]), "--name", "gated", "--rank", "8", "--max-steps", "1", "--batch-size", "2",
            "--samples", "0", "--no-track", *extra]


def test_repro_train_whose_fidelity_fails_registers_nothing(capsys, monkeypatch, tiny_model: Path,
                                                           data: tuple[Path, Path], tmp_path: Path) -> None:
    seen = fake_engine(monkeypatch, [-0.1, -3.0, -3.0])
    code, _, err = run_cli(capsys, *train_args(tiny_model, data, tmp_path / "data"))
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "mean |Δ logprob| 1.9333" in err and "nothing was registered" in err
    assert "--force` registers it" in err and "/adapter" in err  # where the trained adapter was kept
    assert len(seen) == 1  # probed with the one val prompt
    registry = tmp_path / "data" / "registry"
    assert not registry.exists() or Registry(registry).versions("gated") == []


def test_train_with_force_registers_and_the_card_records_it(capsys, monkeypatch, tiny_model: Path,
                                                            data: tuple[Path, Path], tmp_path: Path) -> None:
    fake_engine(monkeypatch, [-0.1, -3.0, -3.0])
    code, out, err = run_cli(capsys, *train_args(tiny_model, data, tmp_path / "data", "--force", "--json"))
    assert code == 0, err
    card = Registry(tmp_path / "data" / "registry").resolve(f"gated@{json.loads(out)['version']}").card
    assert card.fidelity["forced"] is True and card.fidelity["passed"] is False
    assert card.fidelity["probes"] == "val data (1 prompts)"
