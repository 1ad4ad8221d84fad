"""The demo's summary rows: value [CI], delta vs base with significance, gates, FP rate on `none`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metric(value: float, per_class: dict | None = None) -> dict:
    return {"value": value, "ci": [value - 0.05, min(1.0, value + 0.05)],
            "details": {"per_class": per_class} if per_class else {}}


def test_rows_show_ci_delta_gates_and_the_false_positive_rate_on_none() -> None:
    data = {
        "targets": {
            "base": {"metrics": {"label_f1": _metric(0.0, {"none": {"recall": 0.0, "support": 17}})}},
            "contract-clauses@latest": {"metrics": {
                "label_f1": _metric(0.97, {"none": {"recall": 16 / 17, "support": 17},
                                           "termination": {"recall": 1.0, "support": 9}})}},
        },
        "comparisons": [{"target": "contract-clauses@latest", "metric": "label_f1", "delta": 0.97,
                         "significant": True}],
        "gates": [{"target": "contract-clauses@latest", "gate": "label_f1 >= 0.8", "passed": True}],
    }
    rows = _demo().summary_rows(data)
    adapter = [r for r in rows if r[0] == "contract-clauses@latest"]
    assert adapter[0][1] == "label_f1" and "Δ +0.970 *" in adapter[0][2] and adapter[0][3] == "PASS label_f1 >= 0.8"
    assert adapter[1] == ("contract-clauses@latest", "FP rate on none", "0.059 (1/17)", "")
    base_fp = [r for r in rows if r[0] == "base" and r[1] == "FP rate on none"]
    assert base_fp[0][2] == "1.000 (17/17)"


def test_timing_table_adds_install_to_the_steps_and_totals_them() -> None:
    from rich.console import Console

    demo = _demo()
    console = Console(width=120, record=True)
    console.print(demo.timing_table({"train": 300.0, "eval": 60.0}, 360.0, 240.0))
    text = console.export_text()
    assert "install (make install)" in text and "240" in text
    assert "600 (10.0 min)" in text

    console = Console(width=120, record=True)
    console.print(demo.timing_table({"train": 300.0}, 300.0, None))
    text = console.export_text()
    assert "install" not in text and "300 (5.0 min)" in text


def test_baseline_verdicts_say_plainly_whether_the_adapter_beats_the_best_prompted_base() -> None:
    data = {"best_baseline": {"label_f1": {
        "baseline": "base-3shot", "value": 0.41, "candidates": {"base": 0.0, "base-3shot": 0.41},
        "adapters": [
            {"target": "a@v1", "delta": 0.5, "ci": [0.4, 0.6], "p_value": 0.001, "significant": True, "beats": True},
            {"target": "a@v2", "delta": 0.01, "ci": [-0.03, 0.05], "p_value": 0.6, "significant": False,
             "beats": False}]}}}
    lines = _demo().baseline_verdicts(data)
    assert lines[0].startswith("a@v1 beats the best baseline base-3shot (0.410) on label_f1: +0.500")
    assert lines[1].startswith("a@v2 does NOT beat the best baseline base-3shot")
    assert _demo().baseline_verdicts({}) == []


def test_delta_column_is_against_the_suite_baseline_not_a_prompted_baseline() -> None:
    data = {"baseline": "base",
            "targets": {"a@v1": {"metrics": {"label_f1": _metric(0.9)}}},
            "comparisons": [{"target": "a@v1", "vs": "base", "metric": "label_f1", "delta": 0.9, "significant": True},
                            {"target": "a@v1", "vs": "base-3shot", "metric": "label_f1", "delta": 0.2,
                             "significant": True}]}
    rows = _demo().summary_rows(data)
    assert "Δ +0.900 *" in rows[0][2]


def test_human_lines_show_the_rule_correlation_and_the_judge_kappa(tmp_path: Path) -> None:
    import json

    (tmp_path / "correlation.json").write_text(json.dumps({"table": {"rows": [
        {"metric": "rougeL", "criterion": "accuracy", "n": 40, "spearman": 0.81, "spearman_ci": [0.7, 0.9]}]}}))
    (tmp_path / "results.json").write_text(json.dumps({"judge": {"agreement": {"status": "measured", "criteria": [
        {"criterion": "accuracy", "n": 40, "kappa": {"value": 0.12, "ci": [-0.1, 0.3]}, "trusted": False},
        {"criterion": "safety", "n": 3, "kappa": {"value": None, "note": "not enough data"}}]}}}))
    lines = _demo().human_lines(tmp_path)
    assert lines[0] == "ROUGE-L ↔ accuracy grades (scripted reviewer, n=40): Spearman 0.81 [0.70, 0.90]"
    assert lines[1] == "judge vs reviewer on accuracy (n=40): κ 0.12 [-0.10, 0.30] UNTRUSTED"
    assert lines[2] == "judge vs reviewer on safety (n=3): not enough data"
    assert _demo().human_lines(tmp_path / "missing") == []
