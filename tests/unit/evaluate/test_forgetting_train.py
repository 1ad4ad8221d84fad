"""`train`'s forgetting step: a subset of the shipped suite through the registration engine, on the card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.cli.forgetting import SUITE, ForgettingSettings, measure_forgetting
from lorafleet.registry import Registry
from tests.unit.core.peft_files import write_fake_peft

REPO = Path(__file__).resolve().parents[3]


@dataclass
class FakeEngine:
    """The engine_session's surface that forgetting uses, in front of the fake OpenAI server."""

    url: str
    api_key: str = "k"
    base_name: str = "fake-base"
    dtype: str = "float32"
    reused: bool = True
    start_s: float = 0.0
    loaded: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v1"

    def load(self, name: str, path: Path) -> None:
        self.loaded.append((name, path))


def _register(registry: Registry, tmp_path: Path) -> None:
    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny", weights_sha256="c" * 64),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)


def test_train_records_a_subset_of_the_shipped_suite_on_the_card(fake, tmp_path: Path, data_dir: Path,
                                                                 registry: Registry) -> None:
    _register(registry, tmp_path)
    fake.state.adapters.append("intents@v1")
    fake.state.token_logprob = {"fake-base": -0.2, "intents@v1": -0.2}
    engine = FakeEngine(url=fake.url)
    settings = ForgettingSettings(data_dir=data_dir, forgetting_suite=REPO / SUITE, forgetting_prompts=20)
    entry = measure_forgetting(registry, "intents@v1", settings, engine=engine)
    assert engine.loaded and engine.loaded[0][0] == "intents@v1"
    card = registry.resolve("intents@v1").card
    assert card.forgetting == entry and entry["where"] == "train" and entry["samples"] == 20
    assert entry["references"]["base"] == "base sha256:" + "c" * 64  # the card's base sha, not the engine's path
    assert entry["engine_dtype"] == "float32" and entry["seconds"] >= 0
    # The fake echoes "<model> says: <prompt>": the adapter's answers differ from the base's on every prompt.
    assert entry["passed"] is False and entry["drop"]["rougeL"]["value"] > 0.05
    assert entry["perplexity_ratio"] == 1.0
    assert len((data_dir / "eval" / "forgetting").glob("*.json").__next__().read_text()) > 0


def test_no_suite_records_why_and_starts_no_engine(tmp_path: Path, data_dir: Path, registry: Registry) -> None:
    _register(registry, tmp_path)
    settings = ForgettingSettings(data_dir=data_dir, forgetting_suite=tmp_path / "missing.yaml")
    entry = measure_forgetting(registry, "intents@v1", settings)
    assert entry["skipped"].startswith("no forgetting suite at") and registry.resolve("intents@v1").card.forgetting


def test_train_step_checks_the_saved_adapter_under_a_throwaway_name_before_registration(
        fake, tmp_path: Path, data_dir: Path) -> None:
    from types import SimpleNamespace

    from lorafleet.cli.forgetting import train_forgetting

    engine = FakeEngine(url=fake.url)
    check = SimpleNamespace(name="intents", adapter_dir=tmp_path / "adapter", base=tmp_path / "no-base", qlora=False,
                            probes=[])
    names: list[str] = []

    def respond(body: dict) -> str:
        names.append(body["model"])
        return "same answer"  # the adapter answers as the base does: nothing forgotten

    fake.state.respond = respond
    settings = ForgettingSettings(data_dir=data_dir, forgetting_suite=REPO / SUITE, forgetting_prompts=10)
    # The fake accepts only listed models: list whatever name the step picks when it loads it.
    engine.load = lambda name, path: (engine.loaded.append((name, path)), fake.state.adapters.append(name))
    fields = train_forgetting(check, engine, settings)
    (name, path), = engine.loaded
    assert name.startswith("intents-forgetting-") and path == check.adapter_dir and "@" not in name
    entry = fields["forgetting"]
    assert entry["passed"] is True and entry["samples"] == 10 and entry["where"] == "train"
    assert set(names) == {"fake-base", name}
    assert train_forgetting(check, engine, settings.model_copy(update={"forgetting_check": False})) == {}


def test_repro_qlora_references_are_the_served_twins_answers_not_the_full_bases(
        fake, tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """The demo's QLoRA adapters were compared with the full base's cached answers while their engine served
    the nf4 twin (noise floor 0.42): the references must be keyed by the base the engine serves."""
    from types import SimpleNamespace

    from lorafleet.cli import forgetting

    shas = {tmp_path / "full": "f" * 64, tmp_path / "full-nf4": "4" * 64}
    monkeypatch.setattr("lorafleet.base_model.inspect_base", lambda path: SimpleNamespace(weights_sha256=shas[path]))
    engine = FakeEngine(url=fake.url)
    engine.load = lambda name, path: (engine.loaded.append((name, path)), fake.state.adapters.append(name))
    check = SimpleNamespace(name="clauses", adapter_dir=tmp_path / "adapter", base=tmp_path / "full", qlora=True,
                            probes=[])
    settings = ForgettingSettings(data_dir=data_dir, forgetting_suite=REPO / SUITE, forgetting_prompts=5)
    twin = SimpleNamespace(variant="nf4", path=tmp_path / "full-nf4", vllm_args=[])
    entry = forgetting.train_forgetting(check, engine, settings, served=twin)["forgetting"]
    assert entry["references"]["base"] == "base sha256:" + "4" * 64
    gpu = SimpleNamespace(variant="nf4", path=tmp_path / "full", vllm_args=["--quantization", "bitsandbytes"])
    entry = forgetting.train_forgetting(check, engine, settings, served=gpu)["forgetting"]
    assert entry["references"]["base"] == "base sha256:" + "f" * 64 + "+nf4"
