from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.errors import InvalidNameError, NotFoundError, RegistryError
from lorafleet.registry import Registry, pick_weighted


def make_peft_dir(path: Path, rank: int = 8) -> Path:
    """A minimal, valid-looking PEFT folder (header-correct safetensors) without torch."""
    from tests.unit.core.peft_files import write_fake_peft

    return write_fake_peft(path, rank=rank)


def card(name: str = "x") -> AdapterCard:
    return AdapterCard(name=name, version="v1", base=BaseModelRef(id="base"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))


def test_register_creates_immutable_versions_and_latest(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")
    first = registry.register("intents", src, card())
    second = registry.register("intents", src, card())
    assert (first.version, second.version) == ("v1", "v2")
    assert registry.versions("intents") == ["v1", "v2"]
    assert registry.aliases("intents")["latest"] == "v2"
    assert registry.resolve("intents").version == "v2"
    assert registry.resolve("intents@v1").card.files["adapter_model.safetensors"]
    stored = json.loads((first.path / "card.json").read_text())
    assert stored["name"] == "intents" and stored["version"] == "v1"


def test_removed_version_numbers_are_never_reused(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")
    registry.register("a", src, card())
    registry.register("a", src, card())
    registry.remove("a@v2")
    assert registry.aliases("a")["latest"] == "v1"
    assert registry.register("a", src, card()).version == "v3"


def test_aliases_and_weighted_canary(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")
    for _ in range(3):
        registry.register("a", src, card())
    registry.set_alias("a", "prod", "v2")
    assert registry.resolve("a@prod").version == "v2"
    registry.set_alias("a", "canary", {"v2": 0.75, "v3": 0.25})
    rng = random.Random(1)
    picks = Counter(registry.resolve("a@canary", rng=rng).version for _ in range(2000))
    assert 0.70 < picks["v2"] / 2000 < 0.80
    sticky = {registry.resolve("a@canary", sticky_key="user-7").version for _ in range(20)}
    assert len(sticky) == 1


def test_sticky_picks_spread_over_users() -> None:
    picks = Counter(pick_weighted({"v1": 0.5, "v2": 0.5}, key=f"u{i}") for i in range(1000))
    assert 400 < picks["v1"] < 600


@pytest.mark.parametrize("target, error", [
    ({"v1": 0.5, "v2": 0.4}, "sum to 0.9"),
    ("v9", "no version v9"),
    ({"v1": 1.0, "v9": 0.0}, "weight"),
])
def test_bad_alias_targets(registry: Registry, tmp_path: Path, target, error: str) -> None:
    src = make_peft_dir(tmp_path / "peft")
    registry.register("a", src, card())
    registry.register("a", src, card())
    with pytest.raises(RegistryError, match=error):
        registry.set_alias("a", "prod", target)
    assert "prod" not in registry.aliases("a")


def test_alias_rules(registry: Registry, tmp_path: Path) -> None:
    registry.register("a", make_peft_dir(tmp_path / "peft"), card())
    with pytest.raises(InvalidNameError):
        registry.set_alias("a", "latest", "v1")
    with pytest.raises(InvalidNameError):
        registry.set_alias("a", "v2", "v1")
    with pytest.raises(NotFoundError):
        registry.resolve("a@prod")
    with pytest.raises(NotFoundError):
        registry.resolve("missing")


def test_remove_refuses_version_under_alias(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")
    registry.register("a", src, card())
    registry.register("a", src, card())
    registry.set_alias("a", "prod", "v1")
    with pytest.raises(RegistryError, match="prod"):
        registry.remove("a@v1")
    with pytest.raises(RegistryError, match="--all"):
        registry.remove("a")
    with pytest.raises(RegistryError, match="alias 'prod'.*still points") as info:  # name@prod users would break
        registry.remove("a", all_versions=True)
    assert "--delete" in info.value.hint
    assert registry.versions("a") == ["v1", "v2"]
    registry.remove_alias("a", "prod")
    assert registry.remove("a", all_versions=True) == ["v1", "v2"]
    assert registry.versions("a") == []


def test_corrupt_entries_are_reported(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")
    v1 = registry.register("a", src, card())
    v2 = registry.register("a", src, card())
    (v1.path / "card.json").unlink()
    (v2.path / "card.json").write_text("{not json")
    with pytest.raises(RegistryError, match="card.json is missing"):
        registry.resolve("a@v1")
    with pytest.raises(RegistryError, match="invalid card"):
        registry.resolve("a@v2")
    rows = registry.summaries()
    assert [r.error is not None for r in rows] == [True, True]
    (registry.root / "a" / "aliases.json").write_text("[1, 2")
    with pytest.raises(RegistryError, match="aliases.json: invalid JSON"):
        registry.resolve("a")


def test_crash_before_rename_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    src = make_peft_dir(tmp_path / "peft")

    def crash() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        registry.register("a", src, card(), fail_before_rename=crash)
    assert registry.versions("a") == []
    assert [p.name for p in (registry.root / "a").iterdir()] == []
    assert registry.register("a", src, card()).version == "v1"


def test_update_card_only_mutable_fields(registry: Registry, tmp_path: Path) -> None:
    registry.register("a", make_peft_dir(tmp_path / "peft"), card())
    registry.update_card("a@v1", eval_runs=[{"run": "r1"}])
    assert registry.resolve("a@v1").card.eval_runs == [{"run": "r1"}]
    with pytest.raises(RegistryError, match="immutable"):
        registry.update_card("a@v1", lora=None)


def lock_is_held(path: Path) -> bool:
    """Whether someone holds the registry's file lock (a second handle cannot take it)."""
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(path), timeout=0, is_singleton=False):
            return False
    except Timeout:
        return True


def test_update_card_with_applies_the_function_to_the_current_card_under_the_lock(registry: Registry,
                                                                                   tmp_path: Path) -> None:
    registry.register("a", make_peft_dir(tmp_path / "peft"), card())
    seen = []

    def add(run: str):
        def fn(current: AdapterCard) -> dict:
            seen.append(lock_is_held(registry.root / ".locks" / "a.lock"))
            return {"eval_runs": [*current.eval_runs, {"run": run}]}
        return fn

    registry.update_card_with("a", add("r1"))
    updated = registry.update_card_with("a@latest", add("r2"))
    assert updated.eval_runs == [{"run": "r1"}, {"run": "r2"}] == registry.resolve("a@v1").card.eval_runs
    assert seen == [True, True] and not lock_is_held(registry.root / ".locks" / "a.lock")
    before = (registry.root / "a" / "v1" / "card.json").stat().st_mtime_ns
    assert registry.update_card_with("a@v1", lambda c: {}).eval_runs == updated.eval_runs  # {} writes nothing
    assert (registry.root / "a" / "v1" / "card.json").stat().st_mtime_ns == before
    with pytest.raises(RegistryError, match="immutable"):
        registry.update_card_with("a@v1", lambda c: {"lora": None})


def test_eight_concurrent_imports(tmp_path: Path) -> None:
    """Eight processes importing the same name: eight distinct, complete versions."""
    src = make_peft_dir(tmp_path / "peft")
    data_dir = tmp_path / "data"
    procs = [
        subprocess.Popen([sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), "adapters", "import",
                          str(src), "--name", "shared", "--skip-fidelity", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outputs]
    versions = sorted(json.loads(out)["version"] for out, _ in outputs)
    assert versions == sorted(f"v{i}" for i in range(1, 9))
    reg = Registry(data_dir / "registry")
    assert reg.versions("shared") == [f"v{i}" for i in range(1, 9)]
    for v in reg.versions("shared"):
        resolved = reg.resolve(f"shared@{v}")
        assert resolved.card.version == v
        stored = (resolved.path / "adapter_model.safetensors").read_bytes()
        assert stored == (src / "adapter_model.safetensors").read_bytes()
    assert reg.aliases("shared")["latest"] == "v8"
    assert not [p for p in (data_dir / "registry" / "shared").iterdir() if p.name.startswith(".tmp")]


def test_a_relative_registry_root_gives_absolute_adapter_paths(tmp_path: Path, monkeypatch) -> None:
    # The gateway hands these paths to vLLM, which may run in another folder (--upstream).
    monkeypatch.chdir(tmp_path)
    registry = Registry(Path("data") / "registry")
    registry.register("intents", make_peft_dir(tmp_path / "peft"), card())
    monkeypatch.chdir("/")
    resolved = registry.resolve("intents")
    assert resolved.path.is_absolute() and (resolved.path / "adapter_config.json").is_file()
