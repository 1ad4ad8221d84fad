"""The eval cache is keyed by what answered: the served version and the base's identity."""

from __future__ import annotations

from pathlib import Path

from lorafleet.evaluate.client import base_identity, served_identity
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite

from tests.unit.evaluate.conftest import intent_rows, write_jsonl


def suite_file(tmp_path: Path, targets: str) -> Path:
    write_jsonl(tmp_path / "d.jsonl", intent_rows(3))
    path = tmp_path / "s.yaml"
    path.write_text(f"name: c\ndataset: d.jsonl\ntargets: {targets}\nmetrics: [rougeL]\nstats: {{resamples: 10}}\n")
    return path


def outputs(fake, path: Path, tmp_path: Path) -> dict[str, list[tuple[str, bool]]]:
    opts = RunOptions(endpoint=fake.url, cache_path=tmp_path / "cache.sqlite")
    outcome = run_suite(load_suite(path), path, opts, runs_dir=tmp_path / "runs")
    from lorafleet.evaluate.store import RunStore

    return {t: [(c.output, c.cached) for c in rows.values()] for t, rows in RunStore(outcome.path).outputs().items()}


def test_a_changed_base_never_returns_a_stale_cached_answer(fake, tmp_path: Path) -> None:
    path = suite_file(tmp_path, "[base, intents@latest]")
    fake.state.pins = {"intents@latest": "v3"}
    fake.state.base_info = {"kind": "base", "weights_sha256": "a" * 64}
    fake.state.default = lambda model, text: f"old {model}"
    first = outputs(fake, path, tmp_path)
    assert first["base"][0] == ("old fake-base", False)
    again = outputs(fake, path, tmp_path)
    assert all(cached for rows in again.values() for _, cached in rows)  # same base, same version: cached
    # The base's weights change under the same name: neither the base nor the adapter on it may be served
    # from the cache.
    fake.state.base_info = {"kind": "base", "weights_sha256": "b" * 64}
    fake.state.default = lambda model, text: f"new {model}"
    changed = outputs(fake, path, tmp_path)
    assert changed["base"] == [("new fake-base", False)] * 3
    assert changed["intents@latest"] == [("new intents@v3", False)] * 3


def test_a_re_pointed_model_never_returns_a_stale_cached_answer(fake, tmp_path: Path) -> None:
    """A plain vLLM lists no lorafleet versions; a LoRA name re-pointed to other files shows in its root."""
    path = suite_file(tmp_path, "[intents@latest]")
    fake.state.roots = {"intents@latest": "/loras/intents-v1"}
    fake.state.default = lambda model, text: "answer of v1"
    assert outputs(fake, path, tmp_path)["intents@latest"][0] == ("answer of v1", False)
    fake.state.roots = {"intents@latest": "/loras/intents-v2"}
    fake.state.default = lambda model, text: "answer of v2"
    assert outputs(fake, path, tmp_path)["intents@latest"] == [("answer of v2", False)] * 3


def test_a_base_without_a_reported_sha_is_keyed_by_its_root(fake, tmp_path: Path) -> None:
    path = suite_file(tmp_path, "[base]")
    fake.state.roots = {"fake-base": "/models/one"}
    outputs(fake, path, tmp_path)
    fake.state.roots = {"fake-base": "/models/two"}
    fake.state.default = lambda model, text: "other weights"
    assert outputs(fake, path, tmp_path)["base"] == [("other weights", False)] * 3


def test_identity_names_version_and_base() -> None:
    listed = [{"id": "b", "parent": None, "root": "b", "lorafleet": {"kind": "base", "weights_sha256": "f" * 64}},
              {"id": "x@v2", "parent": "b", "root": "x", "lorafleet": {"kind": "adapter", "adapter": "x",
                                                                        "version": "v2"}},
              {"id": "x@canary", "parent": "b", "root": "x", "lorafleet": {"kind": "alias", "adapter": "x",
                                                                            "versions": {"v1": 0.9, "v2": 0.1}}}]
    assert base_identity(listed) == "base sha256:" + "f" * 64
    assert served_identity("x@v2", listed) == "x@v2 on base sha256:" + "f" * 64
    assert "versions=[('v1', 0.9), ('v2', 0.1)]" in served_identity("x@canary", listed)
    assert served_identity("b", listed) == base_identity(listed)
    assert served_identity("anything", []) == ""
