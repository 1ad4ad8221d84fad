"""The fidelity check's maths and refusal, and `adapters import`'s servability checks against the base's files,
with fakes for the engine and the HF reference (the real ones: tests/integration/test_fidelity_real.py)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from lorafleet import fidelity as fid
from lorafleet.adapter_files import base_module_names, base_tensor_shapes, inspect_peft_dir, shape_problems
from lorafleet.cli.main import main
from lorafleet.errors import RegistryError
from tests.unit.core.peft_files import write_fake_peft, write_safetensors


def probe(tokens: list[int], engine: list[float], ref: list[float], argmax: list[int] | None = None) -> fid.ProbeResult:
    return fid.ProbeResult(prompt_tokens=3, tokens=tokens, engine_logprobs=engine, reference_logprobs=ref,
                           reference_argmax=tokens if argmax is None else argmax)


def test_compare_counts_agreement_and_abs_diffs_over_every_position() -> None:
    a = probe([5, 6], [-0.1, -0.5], [-0.2, -0.5], argmax=[5, 9])
    b = probe([7], [-1.0], [-0.4])
    agreement, worst, mean, n = fid.compare([a, b])
    assert n == 3 and agreement == pytest.approx(2 / 3)
    assert worst == pytest.approx(0.6) and mean == pytest.approx((0.1 + 0.0 + 0.6) / 3)


def test_compare_refuses_no_tokens_and_ragged_lists() -> None:
    with pytest.raises(RegistryError, match="no generated tokens"):
        fid.compare([probe([], [], [])])
    with pytest.raises(ValueError, match="differ in length"):
        fid.compare([probe([1, 2], [-0.1], [-0.1, -0.2])])


@pytest.mark.parametrize("engine, argmax, passed", [
    ([-0.10, -0.20, -0.30, -0.40], [1, 2, 3, 4], True),   # within both limits
    ([-0.10, -0.20, -0.30, -0.90], [1, 2, 3, 4], False),  # mean |Δ| 0.125 > 0.05
    ([-0.10, -0.20, -0.30, -0.40], [1, 2, 3, 9], False),  # agreement 0.75 < 0.95
])
def test_judge_passes_only_within_both_limits(engine: list[float], argmax: list[int], passed: bool) -> None:
    tol = fid.Tolerance(min_agreement=0.95, max_mean_abs_diff=0.05)
    result = fid.judge([probe([1, 2, 3, 4], engine, [-0.1, -0.2, -0.3, -0.4], argmax)], tol, engine="started",
                       engine_dtype="float32", base="/b", probes="fixed probes")
    assert result.passed is passed and result.tokens == 4 and result.prompts == 1
    if not passed:
        err = fid.refusal(result, "adapter-dir")
        assert "nothing was registered" in err.message and "--force" in err.hint
        assert f"{result.token_agreement:.3f}" in err.message and f"{result.mean_abs_logprob_diff:.4f}" in err.message


def test_tolerance_is_looser_for_bf16_and_unknown_dtypes() -> None:
    f32, bf16 = fid.tolerance_for("float32"), fid.tolerance_for("bfloat16")
    assert f32.max_mean_abs_diff < bf16.max_mean_abs_diff and f32.min_agreement >= bf16.min_agreement
    assert fid.tolerance_for("unknown") == bf16


# ---- the base's files and `adapters import` -----------------------------------------------------------------

HIDDEN = 16


def write_fake_base(path: Path, modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    """A HF-shaped base folder: config.json and a safetensors file with one layer's attention weights."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    tensors = {f"model.layers.0.self_attn.{m}.weight": (HIDDEN, HIDDEN) for m in modules}
    tensors["model.embed_tokens.weight"] = (32, HIDDEN)
    write_safetensors(path / "model.safetensors", tensors)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_base_module_names_and_shapes_come_from_the_header(tmp_path: Path) -> None:
    base = write_fake_base(tmp_path / "base")
    shapes = base_tensor_shapes(base)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == [HIDDEN, HIDDEN]
    assert {"q_proj", "v_proj", "self_attn", "lm_head"} <= base_module_names(shapes)


def test_shape_problems_name_the_tensor_and_the_shape_needed(tmp_path: Path) -> None:
    base = write_fake_base(tmp_path / "base")
    peft = write_fake_peft(tmp_path / "peft", rank=8)
    assert shape_problems(inspect_peft_dir(peft), base_tensor_shapes(base)) == []
    wide = write_fake_base(tmp_path / "wide")
    write_safetensors(wide / "model.safetensors", {"model.layers.0.self_attn.q_proj.weight": (32, 32)})
    problems = shape_problems(inspect_peft_dir(peft), base_tensor_shapes(wide))
    assert problems and "q_proj.lora_A.weight" in problems[0] and "needs [8, 32]" in problems[0]


def test_repro_import_rank32_with_a_module_the_base_lacks_is_refused_before_any_engine(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a rank-32 adapter targeting a module the base lacks registered and failed only when served."""
    base = write_fake_base(tmp_path / "base", modules=("q_proj", "k_proj", "o_proj"))  # no v_proj
    peft = write_fake_peft(tmp_path / "peft", rank=32)  # targets q_proj, v_proj
    touched = []
    monkeypatch.setattr("lorafleet.cli.fidelity.engine_session", lambda *a, **k: touched.append(a))
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "adapters", "import", str(peft), "--name", "x",
                       "--base", str(base))
    assert code == 2 and "Traceback" not in err and touched == []
    assert "rank 32 is above the server's --max-lora-rank 16" in err
    assert "['v_proj'] do not exist in the base model" in err
    assert "LORAFLEET_MAX_LORA_RANK" in err and "--base with the base this adapter was trained on" in err
    assert not (tmp_path / "data" / "registry" / "x").exists()


def test_repro_import_checks_rank_against_the_configured_max_lora_rank(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's --max-lora-rank (LORAFLEET_MAX_LORA_RANK), not a fixed 16: rank 32 passes the static checks
    once the servers allow 32 (here the fidelity check is then skipped)."""
    base = write_fake_base(tmp_path / "base")
    peft = write_fake_peft(tmp_path / "peft", rank=32)
    monkeypatch.setenv("LORAFLEET_MAX_LORA_RANK", "32")
    code, out, err = run(capsys, "--data-dir", str(tmp_path / "data"), "adapters", "import", str(peft), "--name", "x",
                         "--base", str(base), "--skip-fidelity", "--json")
    assert code == 0, err
    card = json.loads((tmp_path / "data" / "registry" / "x" / "v1" / "card.json").read_text())
    assert card["fidelity"] == {"skipped": "--skip-fidelity"}


class FakeEngine:
    """Stands in for the engine session: greedy tokens [11, 12, 13] with the given logprobs."""

    def __init__(self, logprobs: list[float]) -> None:
        self.url, self.api_key, self.base_name, self.dtype = "http://fake", "k", "base", "float32"
        self.reused, self.start_s, self.logprobs, self.loaded = False, 1.5, logprobs, []

    def load(self, name: str, path: Path) -> None:
        self.loaded.append(name)

    def unload(self, name: str) -> None:
        self.loaded.remove(name)

    def completions(self, model: str, prompts: list[list[int]], **kw: object) -> list[dict]:
        lp = {"tokens": [f"token_id:{t}" for t in (11, 12, 13)], "token_logprobs": self.logprobs}
        return [{"index": i, "logprobs": lp} for i in range(len(prompts))]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    """Install a fake engine with `engine_logprobs`; the reference always gives -0.1 per token, argmax = token."""
    engines: list[FakeEngine] = []

    def install(engine_logprobs: list[float]) -> list[FakeEngine]:
        @contextmanager
        def session(*a, **k):
            engines.append(FakeEngine(engine_logprobs))
            yield engines[-1]

        monkeypatch.setattr("lorafleet.cli.fidelity.engine_session", session)
        monkeypatch.setattr("lorafleet.train.fidelity.prompt_token_ids", lambda base, msgs: [[1, 2, 3]] * len(msgs))
        monkeypatch.setattr("lorafleet.train.fidelity.reference_logprobs",
                            lambda base, adapter, seqs: [([-0.1] * len(g), list(g)) for _, g in seqs])
        return engines

    return install


def test_repro_import_whose_fidelity_fails_is_refused_with_numbers_and_leaves_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, fakes) -> None:
    engines = fakes([-0.1, -2.0, -3.0])  # served far from the reference
    base, peft = write_fake_base(tmp_path / "base"), write_fake_peft(tmp_path / "peft")
    data = tmp_path / "data"
    code, _, err = run(capsys, "--data-dir", str(data), "adapters", "import", str(peft), "--name", "x",
                       "--base", str(base))
    assert code == 2 and "Traceback" not in err
    assert "token agreement 1.000" in err and "mean |Δ logprob| 1.6000" in err and "nothing was registered" in err
    assert engines and engines[0].loaded == []  # the throwaway adapter was unloaded
    registry = data / "registry"
    leftovers = [p for p in registry.rglob("*") if p.is_dir() and p.name.startswith(("v", ".tmp"))] \
        if registry.exists() else []
    assert leftovers == []


def test_import_with_force_registers_and_records_the_override(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, fakes) -> None:
    fakes([-0.1, -2.0, -3.0])
    base, peft = write_fake_base(tmp_path / "base"), write_fake_peft(tmp_path / "peft")
    data = str(tmp_path / "data")
    code, out, err = run(capsys, "--data-dir", data, "adapters", "import", str(peft), "--name", "x",
                         "--base", str(base), "--force")
    assert code == 0, err
    assert "--force" in out
    code, out, _ = run(capsys, "--data-dir", data, "adapters", "show", "x@v1", "--json")
    card = json.loads(out)
    assert card["fidelity"]["passed"] is False and card["fidelity"]["forced"] is True
    assert card["base"]["path"] == str(base)
    code, out, _ = run(capsys, "--data-dir", data, "adapters", "show", "x@v1")
    assert "fidelity: FAILED, registered with --force" in out


def test_import_that_matches_records_fidelity_on_the_card(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          fakes) -> None:
    fakes([-0.1, -0.1, -0.11])
    base, peft = write_fake_base(tmp_path / "base"), write_fake_peft(tmp_path / "peft")
    data = str(tmp_path / "data")
    code, _, err = run(capsys, "--data-dir", data, "adapters", "import", str(peft), "--name", "x", "--base", str(base))
    assert code == 0, err
    f = json.loads(run(capsys, "--data-dir", data, "adapters", "show", "x", "--json")[1])["fidelity"]
    assert (f["passed"], f["forced"], f["tokens"], f["token_agreement"]) == (True, False, 18, 1.0)
    assert f["engine_dtype"] == "float32" and f["probes"].startswith("fixed probes")
    assert f["seconds"]["engine_start"] == 1.5 and f["tolerance"] == fid.TOLERANCES["float32"].model_dump()
    out = run(capsys, "--data-dir", data, "adapters", "show", "x")[1]
    assert "fidelity: passed: token agreement 1.000" in out


def test_import_without_any_base_is_refused_unless_skipped(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    peft = write_fake_peft(tmp_path / "peft")  # base_model_name_or_path "tiny": not a folder
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "adapters", "import", str(peft), "--name", "x")
    assert code == 2 and "no base to check this adapter against" in err and "--base" in err
