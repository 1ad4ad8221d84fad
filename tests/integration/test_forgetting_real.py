"""The shipped forgetting suite (a tiny subset) against real vLLM: through the gateway onto the adapter's card,
then train's step in a reused registration engine, which reuses the base's answers (same base sha256)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lorafleet.cli.main import main
from tests.fixtures.models import REPO

PROMPTS = 8


def shipped_subset(tmp_path: Path, targets: list[str]) -> Path:
    """examples/forgetting/suite.yaml with its first PROMPTS prompts and shorter answers."""
    suite = yaml.safe_load((REPO / "examples" / "forgetting" / "suite.yaml").read_text())
    suite["targets"] = targets
    suite["dataset"] = {"path": str(REPO / "examples" / "forgetting" / "prompts.jsonl"), "limit": PROMPTS}
    suite["stats"] = {"resamples": 300, "seed": 0}
    path = tmp_path / "forgetting.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_forgetting_through_the_gateway_lands_on_the_card_and_train_reuses_its_references(
        gateway, vllm_server, embedded_base: Path, demo_adapters: dict[str, Path], tmp_path: Path, capsys) -> None:
    suite = shipped_subset(tmp_path, ["base", "pirate@prod"])
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(gateway.data_dir), "eval", "run", str(suite), "--endpoint", gateway.url,
              "--api-key", gateway.admin_key, "--out", str(tmp_path / "run"), "--json"])
    out = capsys.readouterr().out
    results = json.loads(out)
    f = results["forgetting"]
    # The pirate adapter answers "Arr! …" to everything: it forgot how the base answers, and the gate says so.
    assert exc.value.code == 1 and f["samples"] == PROMPTS
    assert f["targets"]["pirate@prod"]["drop"]["rougeL"]["ci"][0] > 0.05
    assert f["targets"]["pirate@prod"]["passed"] is False
    assert f["noise_floor"]["rougeL"]["value"] == pytest.approx(1.0)  # float32 engine: greedy text is stable
    assert f["targets"]["pirate@prod"]["perplexity_ratio"] > 1.5  # prompt_logprobs through the gateway
    assert f["references"]["generated"] == PROMPTS and f["references"]["base"].startswith("base ")
    card = gateway.registry.resolve("pirate@v1").card.forgetting
    assert card["run_id"] == results["run_id"] and card["passed"] is False and card["samples"] == PROMPTS

    # train's step: the saved adapter under a throwaway name in the reused engine, keyed by the base's sha256.
    from lorafleet.cli.engine_session import engine_session
    from lorafleet.cli.forgetting import ForgettingSettings, train_forgetting

    settings = ForgettingSettings(data_dir=gateway.data_dir, engine_url=vllm_server.url,
                                  engine_api_key=vllm_server.api_key, forgetting_suite=suite,
                                  forgetting_prompts=PROMPTS)
    check = SimpleNamespace(name="robot", adapter_dir=demo_adapters["robot"], base=embedded_base, qlora=False,
                            probes=[])
    from lorafleet.base_model import inspect_base

    sha = inspect_base(embedded_base).weights_sha256
    with engine_session(embedded_base, settings) as engine:
        first = train_forgetting(check, engine, settings)["forgetting"]
        again = train_forgetting(check, engine, settings)["forgetting"]
    assert first["references"]["base"] == f"base sha256:{sha}"
    # Generated once per base: a gateway that lists the same sha256 (make demo's does) shares them too.
    assert first["references"]["generated"] == (0 if f["references"]["base"] == first["references"]["base"]
                                                else PROMPTS)
    assert again["references"]["generated"] == 0 and again["references"]["key"] == first["references"]["key"]
    assert first["where"] == "train" and first["engine"].startswith("reused")
    assert first["passed"] is False and first["agreement"]["rougeL"]["value"] < 0.5  # "BEEP BOOP. …"
    print(f"forgetting in train: {first['seconds']} s for {PROMPTS} prompts (references made), "
          f"{again['seconds']} s reused")
