"""Does a small learning rate prevent forgetting? A small LR × steps grid on a demo task: each adapter's task
score (the task's own suite) and its forgetting (examples/forgetting) side by side, in one engine.

    # each training run on its own under the heavy lock (a few minutes each):
    flock /tmp/lorafleet-heavy.lock .venv/bin/python -m benchmarks.forgetting_grid train --task support-intents \
        --lr 2e-4 --steps 40 --data-dir /tmp/fgrid
    # then one engine (the demo's dtype: vLLM's default) for every adapter trained, both suites:
    flock /tmp/lorafleet-heavy.lock .venv/bin/python -m benchmarks.forgetting_grid eval --task support-intents \
        --data-dir /tmp/fgrid --prompts 150 --out /tmp/fgrid/grid.json

Adapters are named `<task>-lr<lr>-s<steps>` in the grid's own data dir; the task suite is the demo's without
its baselines, review and judge; forgetting runs the first --prompts prompts (every kind interleaved).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def adapter_name(task: str, lr: float, steps: int) -> str:
    return f"{task}-lr{lr:g}-s{steps}".replace("+", "").replace(".", "p")


def base_dir() -> Path:
    """The embedded base, as the tests prepare it (make demo's has the same weights sha256)."""
    from tests.fixtures.models import embedded_base_dir

    return embedded_base_dir()


def train(task: str, lr: float, steps: int, data_dir: Path) -> None:
    """One training run of the demo config with a changed LR and step count (no checks: measured below)."""
    name = adapter_name(task, lr, steps)
    cmd = [sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), "train", "--base", str(base_dir()),
           "--config",
           str(REPO / "examples" / "train" / f"{task}.yaml"), "--name", name, "--lr", str(lr), "--max-steps",
           str(steps), "--samples", "0", "--no-track", "--skip-fidelity", "--no-forgetting", "--json"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"train failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    print(json.dumps({"adapter": name, "lr": lr, "steps": steps, "seconds": round(time.perf_counter() - started),
                      "val_loss": result["val_loss"], "best_step": result["best_step"]}))


def task_suite(task: str, targets: list[str], out: Path) -> Path:
    """The demo task's suite with the grid's targets, without baselines, review and judge (not measured here)."""
    path = REPO / "examples" / "suites" / f"{task}.yaml"
    suite = yaml.safe_load(path.read_text())
    for key in ("baselines", "review", "judge"):
        suite.pop(key, None)
    suite["targets"] = targets
    suite["dataset"]["path"] = str((path.parent / suite["dataset"]["path"]).resolve())
    suite["gates"] = [g for g in suite.get("gates", []) if isinstance(g, str)]  # thresholds only: vs base stays
    target = out / f"{task}-grid.yaml"
    target.write_text(yaml.safe_dump(suite, sort_keys=False))
    return target


def forgetting_suite(targets: list[str], prompts: int, out: Path) -> Path:
    path = REPO / "examples" / "forgetting" / "suite.yaml"
    suite = yaml.safe_load(path.read_text())
    suite["targets"] = targets
    suite["dataset"] = {"path": str(path.parent / "prompts.jsonl"), "limit": prompts}
    target = out / "forgetting-grid.yaml"
    target.write_text(yaml.safe_dump(suite, sort_keys=False))
    return target


def evaluate(task: str, data_dir: Path, prompts: int, out: Path | None, extra: dict[str, Path]) -> None:
    """The task suite for every grid adapter of `task` (and extra ones named `<task>-…`), forgetting for all of
    them, in one engine started on the embedded base."""
    from lorafleet.evaluate.runner import RunOptions, run_suite
    from lorafleet.evaluate.suite import load_suite

    from lorafleet.base_model import inspect_base
    from lorafleet.cli.engine_session import EngineSettings, engine_session
    from lorafleet.config import Settings
    from lorafleet.registry import Registry

    core = Settings(data_dir=data_dir)
    registry = Registry(core.registry_dir)
    names = sorted(n for n in registry.names() if n.startswith(f"{task}-lr"))
    adapters = {f"{n}@v1": registry.resolve(f"{n}@v1").path for n in names} | extra
    on_task = [n for n in adapters if n.startswith(f"{task}-")]
    base = base_dir()
    sha = inspect_base(base).weights_sha256
    rows: dict[str, dict] = {n: {} for n in adapters}
    with engine_session(base, EngineSettings.from_core(core), adapters=adapters) as engine:
        for label, path in (("task", task_suite(task, ["base", *on_task], data_dir)),
                            ("forgetting", forgetting_suite(["base", *adapters], prompts, data_dir))):
            opts = RunOptions(endpoint=engine.endpoint, api_key=engine.api_key, concurrency=16, cache_path=None,
                              references_dir=data_dir / "eval" / "forgetting", base_identity=f"base sha256:{sha}")
            suite = load_suite(path).model_copy(update={"base_model": engine.base_name})
            started = time.perf_counter()
            results = run_suite(suite, path, opts, runs_dir=data_dir / "eval" / "runs").results
            seconds = round(time.perf_counter() - started, 1)
            for name in on_task if label == "task" else adapters:
                if label == "task":
                    rows[name]["task"] = {m: (s.value, s.ci) for m, s in results.targets[name].metrics.items()}
                else:
                    rows[name]["forgetting"] = results.forgetting.targets[name].model_dump(mode="json")
            if label == "forgetting":
                info = {"noise_floor": results.forgetting.model_dump(mode="json")["noise_floor"],
                        "base_perplexity": results.forgetting.model_dump(mode="json")["base_perplexity"],
                        "references": results.forgetting.references, "seconds": seconds,
                        "samples": results.forgetting.samples, "warnings": results.warnings}
            else:
                info_task = {"base": {m: s.value for m, s in results.targets["base"].metrics.items()},
                             "seconds": seconds, "samples": results.samples}
        timing = train_step_seconds(engine, on_task[0], adapters[on_task[0]], base, data_dir)
    report = {"task": task, "engine_dtype": engine.dtype, "engine_start_s": engine.start_s, "forgetting": info,
              "task_suite": info_task, "train_step": timing, "adapters": rows}
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text)
    print(text)


def table(report: dict) -> str:
    """The grid as a markdown table: task score and forgetting per adapter, CIs in brackets."""
    def ci(pair: list | tuple, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"[{f.format(pair[0])}, {f.format(pair[1])}]"

    lines = ["| adapter | task score (test) | rougeL vs base's answers | drop [95% CI] | exact match | "
             "perplexity ×base | gate (max_drop 0.05) |", "|---|---|---|---|---|---|---|"]
    for name, row in report["adapters"].items():
        task = row.get("task", {})
        key = "label_f1" if "label_f1" in task else "rougeL" if "rougeL" in task else None
        score = f"{key} {task[key][0]:.3f} {ci(task[key][1])}" if key else "–"
        f = row["forgetting"]
        a, d, em = f["agreement"]["rougeL"], f["drop"]["rougeL"], f["agreement"]["exact_match"]
        ratio = f"{f['perplexity_ratio']:.2f}" if f.get("perplexity_ratio") else "–"
        lines.append(f"| {name} | {score} | {a['value']:.3f} | {d['value']:+.3f} {ci(d['ci'], True)} | "
                     f"{em['value']:.3f} | {ratio} | {'pass' if f['passed'] else 'fail'} |")
    return "\n".join(lines)


def train_step_seconds(engine: object, name: str, folder: Path, base: Path, data_dir: Path) -> dict:
    """What `train`'s forgetting step costs in this engine: first (the base's answers made) and reused."""
    from types import SimpleNamespace

    from lorafleet.cli.forgetting import TRAIN_PROMPTS, ForgettingSettings, train_forgetting

    settings = ForgettingSettings(data_dir=data_dir / "train-step", forgetting_prompts=TRAIN_PROMPTS,
                                  forgetting_suite=REPO / "examples" / "forgetting" / "suite.yaml")
    check = SimpleNamespace(name=name.split("@")[0], adapter_dir=folder, base=base, qlora=False, probes=[])
    first = train_forgetting(check, engine, settings)["forgetting"]
    again = train_forgetting(check, engine, settings)["forgetting"]
    return {"prompts": TRAIN_PROMPTS, "first_s": first["seconds"], "reused_s": again["seconds"],
            "first_generated": first["references"]["generated"], "drop": again["drop"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "eval", "table"])
    parser.add_argument("--task", default="support-intents")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=150)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="An adapter trained elsewhere (e.g. make demo's), served as NAME.")
    args = parser.parse_args()
    if args.command == "table":
        print(table(json.loads(args.out.read_text())))
    elif args.command == "train":
        train(args.task, args.lr, args.steps, args.data_dir)
    else:
        extra = dict(item.split("=", 1) for item in args.adapter)
        evaluate(args.task, args.data_dir, args.prompts, args.out, {k: Path(v) for k, v in extra.items()})


if __name__ == "__main__":
    main()
