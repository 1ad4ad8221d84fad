"""Constrained decoding (vLLM structured outputs `choice`) through the real gateway, raw and as a suite's
declared baseline: the body field passes through unchanged and only labels come back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lorafleet.cli.main import main
from tests.integration.conftest import BASE_NAME
from tests.integration.demo_adapters import PROMPTS

CHOICES = ["[Intent: greeting]", "[Intent: question]", "[Intent: other]"]
SUITE = """\
name: constrained-check
dataset: test.jsonl
targets: [base, pirate@prod]
generation: {temperature: 0, max_tokens: 12, seed: 0}
metrics: [accuracy, label_f1]
extraction:
  label_pattern: '\\[Intent:\\s*([^\\]]+?)\\s*\\]'
  labels: [greeting, question, other]
stats: {resamples: 200, seed: 0}
baselines:
  - {name: base-constrained, kind: constrained}
  - {name: base-2shot-constrained, kind: k_shot, k: 2, examples: train.jsonl, constrained: true}
"""


def rows(prompts: list[str], label: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": p},
                          {"role": "assistant", "content": f"[Intent: {label}] noted."}], "label": label}
            for p in prompts]


def test_constrained_choice_passes_through_the_gateway(gateway, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    headers = {"Authorization": f"Bearer {gateway.admin_key}"}
    for model in (BASE_NAME, "pirate@prod"):  # the pirate adapter would otherwise answer "Arr! …"
        for prompt in PROMPTS[:2]:
            # max_tokens with room: under the grammar a choice can take one token per character
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                    "temperature": 0, "structured_outputs": {"choice": CHOICES}}
            resp = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=120)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] in CHOICES, (model, resp.json())

    test = rows(PROMPTS[:3], "question") + rows(["Say hello.", "Hi there!"], "greeting")
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    train = rows(["Hello, friend!"], "greeting") + rows(["Which river is longest?"], "question") \
        + rows(["Blue is nice."], "other")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    run_dir = tmp_path / "run"  # the suite's max_tokens (12) is too short for a choice; the baselines raise it
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path / "data"), "eval", "run", str(suite), "--endpoint", gateway.url,
              "--api-key", gateway.admin_key, "--out", str(run_dir), "--no-cache", "--json"])
    out = capsys.readouterr()
    assert int(exc.value.code or 0) == 0, out.err + out.out
    results = json.loads(out.out)
    assert set(results["targets"]) == {"base", "pirate@prod", "base-constrained", "base-2shot-constrained"}
    outputs = [json.loads(line) for line in (run_dir / "outputs.jsonl").read_text().splitlines()]
    for target in ("base-constrained", "base-2shot-constrained"):
        answers = [o["output"] for o in outputs if o["target"] == target]
        assert len(answers) == 5 and set(answers) <= set(CHOICES), (target, answers)
        assert results["targets"][target]["model"] == BASE_NAME
    pirate = [o["output"] for o in outputs if o["target"] == "pirate@prod"]
    assert all("Arr" in p for p in pirate), pirate  # the adapter itself is not constrained
    best = results["best_baseline"]["accuracy"]  # the primary metric: the first listed (no gates)
    assert set(best["candidates"]) == {"base", "base-constrained", "base-2shot-constrained"}
    assert [a["target"] for a in best["adapters"]] == ["pirate@prod"]
