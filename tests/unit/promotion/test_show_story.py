"""`adapters show` reads top to bottom: data → training → fidelity → eval runs → forgetting → review → decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.config import Settings
from lorafleet.promotion import promote
from lorafleet.registry import Registry
from tests.unit.promotion.helpers import link_run, register, set_card_field, write_run
from tests.unit.promotion.test_promote_cli import run

HEADINGS = ["── data", "── training", "── fidelity", "── eval runs", "── forgetting", "── review", "── decisions"]


def story_registry(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    set_card_field(registry, "intents@v1",
                   dataset=[{"path": "train.jsonl", "sha256": "ab" * 32, "split": "train", "records": 400}],
                   held_out={"index_version": 3, "matches": 0, "allowed": False, "threshold": 0.8, "found": []},
                   training={"learning_rate": 0.0002, "max_steps": 60})
    run_dir = write_run(tmp_path / "runs", "intents-run", "intents", {"a": [1.0] * 30}, passed={"a": True})
    link_run(registry, "intents@v1", run_dir, "a")
    promote(registry, "intents@v1", "prod", who="alice")


def test_show_tells_the_story_in_order(capsys: pytest.CaptureFixture[str], registry: Registry, tmp_path: Path,
                                       settings: Settings) -> None:
    story_registry(registry, tmp_path)
    code, out, err = run(capsys, "--data-dir", str(settings.data_dir), "adapters", "show", "intents@prod")
    assert code == 0, err
    positions = [out.index(h) for h in HEADINGS]
    assert positions == sorted(positions), out
    data = out[positions[0]:positions[1]]
    assert "dataset train: train.jsonl, 400 records, sha256 abababab" in data
    assert "held-out check: no training record matches a held-out example (index 3" in data
    assert "file adapter_model.safetensors: sha256" in data
    assert "learning_rate=0.0002" in out[positions[1]:positions[2]]
    assert "fidelity: passed" in out[positions[2]:positions[3]]
    assert "intents as a: gates passed" in out[positions[3]:positions[4]]
    assert "forgetting" in out[positions[4]:positions[5]]
    decisions = out[positions[6]:]
    assert "promoted" in decisions and "by alice" in decisions and "runs forgetting-1, intents-run" in decisions
    assert "aliases: latest, prod" in out


def test_show_json_holds_the_same_sections_in_the_same_order(capsys: pytest.CaptureFixture[str], registry: Registry,
                                                             tmp_path: Path, settings: Settings) -> None:
    story_registry(registry, tmp_path)
    code, out, _ = run(capsys, "--data-dir", str(settings.data_dir), "adapters", "show", "intents", "--json")
    data = json.loads(out)
    keys = list(data)
    order = [keys.index(k) for k in ("files", "held_out", "training", "fidelity", "eval_runs", "forgetting",
                                     "review", "decisions")]
    assert order == sorted(order)
    assert data["aliases"] == {"latest": 1.0, "prod": 1.0} and data["source"] == "trained"
    assert data["decisions"][0]["kind"] == "promoted" and data["served_name"] == "intents@v1"


def test_show_lists_a_running_canary(capsys: pytest.CaptureFixture[str], registry: Registry, tmp_path: Path,
                                     settings: Settings) -> None:
    story_registry(registry, tmp_path)
    register(registry, tmp_path)
    promote(registry, "intents@v2", "prod", who="bob", canary=10, force=True, reason="try it")
    code, out, _ = run(capsys, "--data-dir", str(settings.data_dir), "adapters", "show", "intents@v2")
    assert code == 0
    assert "canary on prod: v2 at 10% vs v1, running" in out and "prod (10%)" in out
    assert "FORCED; reason: try it" in out
