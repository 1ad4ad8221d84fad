"""QLoRA on CPU: bitsandbytes nf4 vs plain LoRA on the base's nf4 twin, side by side in one run.

    .venv/bin/python benchmarks/qlora_cpu.py --base .lorafleet/base/smollm2-135m-instruct \
        [--config examples/train/contract-clauses.yaml] [--steps 20] [--data-dir /tmp/qlora-cpu] [--json OUT]

Each mode runs `lorafleet.train.recipe.train` on the same config (steps cut to --steps, one evaluation at
the end, no tracking, no registration, no samples) in its own subprocess: `bitsandbytes` loads the base
through bitsandbytes (Linear4bit, dequantised on every forward), `twin` loads the nf4 twin in fp32
(what `lorafleet train` does on CPU, lorafleet.train.model.qlora_on_twin). Reported: training tok/s and
s/step, wall time, val loss, first/last train loss. Same seed, same data order, same LoRA init.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("bitsandbytes", "twin", "twin-bf16")


def worker(mode: str, base: Path, config: Path, steps: int, data_dir: Path) -> dict:
    from lorafleet.train import recipe
    from lorafleet.train.config import load_config
    from lorafleet.train.settings import TrainSettings

    from lorafleet.fsutil import sha256_file

    recipe.qlora_on_twin = lambda qlora: qlora and mode.startswith("twin")  # type: ignore[assignment]
    if mode == "twin-bf16":  # the twin in bf16 and bf16 autocast: bitsandbytes' bf16 compute dtype, on this CPU
        recipe.use_bf16 = lambda precision: True  # type: ignore[assignment]
    cfg = load_config(config, {"max_steps": steps, "eval_steps": steps, "samples": 0, "track": False,
                               "register_version": False, "base": str(base), "qlora": True})
    settings = TrainSettings(data_dir=data_dir / mode)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # The twin is shared (written once, outside the timed run) so both modes read the very same one.
    (settings.data_dir / "base").mkdir(exist_ok=True)
    twin = data_dir / "base" / f"{base.resolve().name}-nf4"
    link = settings.data_dir / "base" / twin.name
    if not link.exists():
        link.symlink_to(twin.resolve())
    started = time.perf_counter()
    result = recipe.train(cfg, settings, show_progress=False)
    assert result is not None
    return {"mode": mode, "steps": result.steps, "tokens_per_s": result.tokens_per_s,
            "wall_s": round(time.perf_counter() - started, 1), "train_s": result.wall_time_s,
            "cpu_s": result.cpu_time_s, "val_loss": result.val_loss, "serving_val_loss": result.serving_val_loss,
            "train_loss_first": result.train_loss_first, "train_loss_last": result.train_loss_last,
            "peak_rss_mb": result.peak_rss_mb,
            # Two runs of one mode give the same bytes when CPU training is deterministic (same seed, threads).
            "adapter_sha256": sha256_file(Path(result.adapter_dir) / "adapter_model.safetensors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=REPO / ".lorafleet" / "base" / "smollm2-135m-instruct")
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "train" / "contract-clauses.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/qlora-cpu"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--modes", default="bitsandbytes,twin",
                        help=f"comma-separated, from {', '.join(MODES)}; a mode twice checks run-to-run identity")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base, args.config, args.steps, args.data_dir)))
        return
    from lorafleet.base_variants import ensure_nf4

    ensure_nf4(args.base, args.data_dir)
    rows = []
    for mode in args.modes.split(","):
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--base", str(args.base), "--config",
                               str(args.config), "--steps", str(args.steps), "--data-dir", str(args.data_dir)],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{mode}: exited {proc.returncode}\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'mode':<13} {'tok/s':>7} {'train s':>8} {'wall s':>7} {'cpu s':>7} {'val loss':>9} "
          f"{'loss first→last':>18}")
    for r in rows:
        print(f"{r['mode']:<13} {r['tokens_per_s']:>7.1f} {r['train_s']:>8.1f} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
              f"{r['val_loss']:>9.4f} {r['train_loss_first']:>8.4f}→{r['train_loss_last']:.4f}")
    first = rows[0]
    for r in rows[1:]:
        same = "identical adapter" if r["adapter_sha256"] == first["adapter_sha256"] else "different adapter"
        print(f"{r['mode']} / {first['mode']}: {r['tokens_per_s'] / first['tokens_per_s']:.2f}× tok/s; val loss "
              f"{r['val_loss']:.4f} vs {first['val_loss']:.4f}; {same}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
