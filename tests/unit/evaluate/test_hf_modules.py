"""lorafleet's metrics as local Hugging Face `evaluate` modules: loadable offline with evaluate.load(path),
the numbers of `lorafleet eval score`, and `import evaluate` from the repo root is the library, not the
repo's own evaluate/ folder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lorafleet.evaluate import hf_modules
from lorafleet.evaluate.score_file import score_file

from lorafleet.cli.main import main
from tests.unit.evaluate.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[3]
PREDS = ["[Intent: refund] The cat sat on the mat.", "[Intent: billing] Ça coûte 12 € — très cher !", "",
         "[Intent: refund] the car was fast", "[Intent: shipping] refund issued for order 42"]
REFS = [["[Intent: refund] A cat sat on the mat."], ["[Intent: billing] Ça coûte douze euros.", "Ça coûte 12 € !"],
        ["[Intent: billing] nothing here"], ["[Intent: refund] the auto was fast"],
        ["[Intent: refund] refund issued for order 42", "order 42 refunded"]]
PATTERN = r"\[Intent: (\w+)\]"
# Module → extra compute() arguments, and the same as `eval score` flags.
CASES = {"rouge": ({}, []), "bleu": ({}, []), "chrf": ({}, []), "token_f1": ({}, []), "exact_match": ({}, []),
         "meteor": ({}, []), "classification": ({"label_pattern": PATTERN}, ["--label-pattern", PATTERN])}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

LOAD_ALL = """
import json, sys
import evaluate
from lorafleet.evaluate import hf_modules
data = json.load(open(sys.argv[1]))
out = {"evaluate_file": evaluate.__file__, "version": evaluate.__version__, "results": {}}
for module, kwargs in data["cases"].items():
    metric = evaluate.load(hf_modules.path(module))
    out["results"][module] = metric.compute(predictions=data["preds"], references=data["refs"], ci=True,
                                            resamples=200, provenance=True, **kwargs)
batched = evaluate.load(hf_modules.path("rougeL"))
for p, r in zip(data["preds"], data["refs"]):
    batched.add(prediction=p, reference=r)
out["batched_rouge"] = batched.compute()
out["hf_rouge_names"] = evaluate.load(hf_modules.path("rouge")).compute(
    predictions=data["preds"], references=[r[0] for r in data["refs"]], rouge_types=["rouge1"], use_stemmer=False)
print(json.dumps(out))
"""


def eval_score(capsys: pytest.CaptureFixture[str], path: Path, module: str, *flags: str) -> dict[str, dict]:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "score", str(path), "--metrics", module, "--resamples", "200", "--json", *flags])
    assert exc.value.code in (0, None)
    return {r["metric"]: r for r in json.loads(capsys.readouterr().out)}


@pytest.mark.slow
def test_repro_hf_evaluate_load_from_the_repo_root_gives_eval_score_numbers(capsys, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"preds": PREDS, "refs": REFS, "cases": {m: kw for m, (kw, _) in CASES.items()}}))
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    # `python -c` from the repo root puts the root first on sys.path, where evaluate/ is lorafleet's own part.
    proc = subprocess.run([sys.executable, "-c", LOAD_ALL, str(inputs)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "site-packages" in got["evaluate_file"] and not got["evaluate_file"].startswith(str(REPO / "evaluate"))
    path = write_jsonl(tmp_path / "preds.jsonl", [{"prediction": p, "references": r} for p, r in zip(PREDS, REFS,
                                                                                                     strict=True)])
    for module, (_, flags) in CASES.items():
        want = eval_score(capsys, path, module, *flags)
        hf = got["results"][module]
        assert set(hf) == set(want) | {f"{m}_ci" for m in want} | {"config"}, module
        for name, row in want.items():
            assert hf[name] == pytest.approx(row["value"]), (module, name)
            assert hf[f"{name}_ci"] == pytest.approx(list(row["ci"])), (module, name)
            assert hf["config"][name] == row["config"], (module, name)
    assert got["results"]["meteor"]["config"]["meteor"]["stages"] == ["exact", "stem", "synonym"]
    assert got["batched_rouge"] == pytest.approx({k: v for k, v in got["results"]["rouge"].items()
                                                  if k in ("rouge1", "rouge2", "rougeL", "rougeLsum")})
    no_stem = hf_modules.compute("rouge", PREDS, [r[0] for r in REFS], types=["rouge1"], stemmer=False)
    assert got["hf_rouge_names"] == pytest.approx(no_stem)


def test_repro_import_evaluate_at_the_repo_root_without_the_library_says_what_it_is() -> None:
    code = ("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n"
            "import evaluate\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Hugging Face's `evaluate` is not installed" in proc.stderr
    assert "import it as lorafleet.evaluate" in proc.stderr


def test_lorafleet_evaluate_is_still_lorafleets_part_from_the_repo_root() -> None:
    code = "import lorafleet.evaluate as e, sys; print(e.__file__, 'evaluate' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    file, loaded = proc.stdout.split()
    assert Path(file) == REPO / "evaluate" / "__init__.py"
    assert loaded == "False"  # importing the part never loads the library (it would load torch)


def test_compute_equals_eval_score_in_process(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "preds.jsonl", [{"prediction": p, "references": r} for p, r in zip(PREDS, REFS,
                                                                                                     strict=True)])
    for module in ("bleu", "meteor", "classification"):
        want = {s.metric: s for s in score_file(path, [module], label_pattern=PATTERN, resamples=100)}
        got = hf_modules.compute(module, PREDS, REFS, ci=True, resamples=100, label_pattern=PATTERN)
        assert {k: v for k, v in got.items() if not k.endswith("_ci")} == pytest.approx(
            {k: s.value for k, s in want.items()})
        assert {k for k in got if k.endswith("_ci")} == {f"{k}_ci" for k in want}
        for k, s in want.items():
            assert got[f"{k}_ci"] == pytest.approx(list(s.ci))


def test_compute_takes_hf_rouge_argument_names_and_class_ids() -> None:
    refs = [r[0] for r in REFS]
    assert hf_modules.compute("rouge", PREDS, refs, rouge_types=["rougeL"], use_stemmer=False) == pytest.approx(
        hf_modules.compute("rouge", PREDS, refs, types=["rougeL"], stemmer=False))
    assert set(hf_modules.compute("rouge", PREDS, refs, rouge_types=["rougeL"])) == {"rougeL"}
    with pytest.raises(ValueError, match="use_aggregator=False"):
        hf_modules.compute("rouge", PREDS, refs, use_aggregator=False)
    got = hf_modules.compute("classification", [1, 0, 1, 1], [1, 0, 0, 1])
    assert got["accuracy"] == pytest.approx(0.75)


def test_path_maps_metric_names_to_module_folders() -> None:
    assert Path(hf_modules.path("rougeL")).name == "rouge"
    assert Path(hf_modules.path("chrf++")).name == "chrf"
    assert Path(hf_modules.path("label_f1")).name == "classification"
    assert (Path(hf_modules.path("meteor")) / "meteor.py").is_file()
    for bad in ("bogus", "perplexity"):
        with pytest.raises(ValueError, match="no lorafleet evaluate module"):
            hf_modules.path(bad)


def test_every_module_folder_is_one_metric_script_shipped_as_package_data() -> None:
    scripts = sorted(hf_modules.ROOT.glob("*/*.py"))  # the "*/*.py" package_data pattern in setup.py
    assert {p.parent.name for p in scripts} == set(hf_modules.MODULES)
    assert '"lorafleet.evaluate.hf_modules": ["*/*.py"]' in (REPO / "setup.py").read_text()
    for script in scripts:
        assert script.stem == script.parent.name  # evaluate.load(folder) loads folder/<folder name>.py
        classes = [n for n in ast.parse(script.read_text()).body if isinstance(n, ast.ClassDef)]
        assert [ast.unparse(c.bases[0]) for c in classes] == ["evaluate.Metric"], script
        assert f'hf_modules.compute("{script.stem}"' in script.read_text()
