"""Peak memory and training tokens/s: full fine-tuning vs LoRA vs QLoRA.

    .venv/bin/python benchmarks/train.py [--steps 6] [--batch 4] [--base DIR]
    python3 benchmarks/train.py --device cuda --shape 135m,1.7b [--seq-len 512] [--grad-ckpt] [--json OUT.json]

Default (no --shape): the embedded SmolLM2-135M base on CPU, same data (support-intents train,
first examples), same steps, same batch; each mode runs in its own subprocess so its peak RSS
(ru_maxrss) is clean. LoRA/QLoRA use the recipe's own model builders (lorafleet.train.model); the
loop is plain PyTorch AdamW so all three do identical work.

With --shape: a randomly initialised Llama of that shape (no download: random weights are fine
for memory and speed) is saved once and loaded by each mode's subprocess; the data is the same
seeded random tokens for every mode. This path imports nothing from lorafleet, so it runs on a
bare GPU machine; on CUDA the peak is torch.cuda.max_memory_allocated. See shape_bench below.
--grad-ckpt turns on gradient checkpointing (non-reentrant, per decoder layer) in every mode, as
`lorafleet train --gradient-checkpointing` does: the same comparison with activations recomputed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support-intents" / "train.jsonl"
MODES = ("full", "lora", "qlora")


def worker(mode: str, base: Path, steps: int, batch: int) -> dict:
    import torch
    from lorafleet.train.config import TrainConfig
    from lorafleet.train.dataset import prepare
    from lorafleet.train.model import load_base, load_tokenizer, lora_config
    from peft import get_peft_model

    torch.manual_seed(0)
    tokenizer = load_tokenizer(base)
    examples, _ = prepare(DATA, None)
    rows = []
    for ex in examples[: steps * batch]:
        ids = tokenizer.apply_chat_template(ex.prompt + ex.completion, tokenize=True, return_dict=True)["input_ids"]
        rows.append(ids)
    model = load_base(base, qlora=mode == "qlora")
    if mode != "full":
        model = get_peft_model(model, lora_config(TrainConfig(name="bench", train=DATA, rank=16)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        chunk = rows[step * batch:(step + 1) * batch]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    elapsed = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": mode, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "tokens_per_s": round(tokens / elapsed, 1),
            "train_s": round(elapsed, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "trainable_params": sum(p.numel() for p in params), "tokens": tokens, "last_loss": round(loss.item(), 3)}


# --- random-init shapes (--shape): self-contained, so it also runs on a bare GPU machine ---------

# SmolLM2's published shapes; "tiny" is for a quick CPU check of this script itself.
SHAPES: dict[str, dict] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 2048},
    "135m": {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
             "intermediate_size": 1536, "vocab_size": 49152},
    "1.7b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
             "intermediate_size": 8192, "vocab_size": 49152},
    # Llama-3-8B's shape (GQA 32/8, vocab 128k; embeddings tied here like the other shapes): issue 19's GPU run.
    "8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256},
}
SHAPE_MODES = ("full", "full-bf16", "lora", "qlora")
# The recipe's (lorafleet.train.model.CHECKPOINTING_KWARGS), copied: this path imports nothing from lorafleet.
CHECKPOINTING_KWARGS = {"use_reentrant": False}
# On CPU bf16 is slower and not what the recipe does there, so the CPU run keeps the three fp32 modes.
CPU_SHAPE_MODES = ("full", "lora", "qlora")
# What each mode keeps on a GPU: the usual recipe for each, not one dtype forced on all.
GPU_PRECISION = {
    "full": "fp32 weights + fp32 AdamW, bf16 autocast (HF Trainer bf16=True)",
    "full-bf16": "bf16 weights + bf16 AdamW states, no autocast (leanest full FT)",
    "lora": "bf16 frozen base, fp32 LoRA r16 q/k/v/o + AdamW, bf16 autocast",
    "qlora": "nf4 double-quant base (prepare_model_for_kbit_training), fp32 LoRA r16, bf16 compute",
}


def shape_config(shape: str):
    """The LlamaConfig of a named shape (tied embeddings like SmolLM2, no cache in training)."""
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, use_cache=False)


def build_random_base(shape: str, out: Path, device: str) -> None:
    """Seeded random weights saved as a bf16 HF folder, so every mode loads the very same base."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.7B parameters on the GPU takes seconds, not minutes
        model = LlamaForCausalLM(shape_config(shape))
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(out)
    print(json.dumps({"params": params}))


def load_shape_model(mode: str, base: Path, cuda: bool, grad_ckpt: bool = False):
    """The base as each mode trains it (see GPU_PRECISION); fp32 throughout on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    placement = {"device_map": {"": 0}} if cuda else {}
    half = torch.bfloat16 if cuda else torch.float32
    if mode in ("full", "full-bf16", "lora"):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32 if mode == "full" else half,
                                                     **placement)
        if grad_ckpt:  # as lorafleet.train.model.load_base does
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
            if mode == "lora":
                model.enable_input_require_grads()
        return model
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=half)
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, dtype=half, **placement)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt,
                                           gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)


def shape_worker(mode: str, base: Path, args: argparse.Namespace) -> dict:
    """One mode's load, then its training steps at each sequence length (shortest first)."""
    import torch

    cuda = args.device == "cuda"
    torch.manual_seed(0)
    model = load_shape_model(mode, base, cuda, args.grad_ckpt)
    if mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        # The recipe's defaults (train/config.py): r16, alpha 2r, dropout 0.05, q/k/v/o, servable by vLLM.
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    loaded_mb = round(torch.cuda.memory_allocated() / 2**20, 1) if cuda else None
    runs = {str(n): train_steps(model, opt, n, args) for n in seq_lens(args.seq_len)}
    return {"mode": mode, "trainable_params": sum(p.numel() for p in params), "loaded_mb": loaded_mb,
            "grad_ckpt": bool(getattr(model, "is_gradient_checkpointing", False)), "runs": runs,
            "env": environment(cuda)}


def seq_lens(text: str) -> list[int]:
    """"512,2048" → [512, 2048]; [] when any part is not a positive whole number."""
    parts = [n.strip() for n in str(text).split(",")]
    return sorted(int(n) for n in parts) if all(n.isdigit() and int(n) > 0 for n in parts) else []


def train_steps(model, opt, seq_len: int, args: argparse.Namespace) -> dict:
    """Same seeded random tokens for every mode; peak memory of these steps, tokens/s after warm-up."""
    import torch

    cuda = args.device == "cuda"
    if cuda:
        # Optimiser state from a shorter run stays allocated, as it would in a real run; the peak
        # counts from here.
        torch.cuda.reset_peak_memory_stats()
    data = torch.randint(0, model.config.vocab_size, (args.steps, args.batch, seq_len),
                         generator=torch.Generator().manual_seed(seq_len))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and not is_pure_bf16(model))
    tokens, start = 0, time.perf_counter()
    for step in range(args.steps):
        if step == args.warmup:  # the first steps pay for kernel selection and optimiser-state allocation
            if cuda:
                torch.cuda.synchronize()
            tokens, start = 0, time.perf_counter()
        ids = data[step].to(args.device)
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids.numel()
    last_loss = loss.item()  # also waits for the GPU
    elapsed = time.perf_counter() - start
    return {"tokens_timed": tokens, "tokens_per_s": round(tokens / elapsed, 1), "timed_s": round(elapsed, 3),
            "last_loss": round(last_loss, 3), **memory_figures(cuda)}


def is_pure_bf16(model) -> bool:
    """full-bf16 trains bf16 parameters directly; autocast would only add casts."""
    import torch

    return all(p.dtype == torch.bfloat16 for p in model.parameters() if p.requires_grad)


def memory_figures(cuda: bool) -> dict:
    """Peak memory: the CUDA allocator's high-water mark on a GPU, the process's peak RSS on CPU
    (RSS cannot be reset, so on CPU a longer sequence's figure includes the shorter runs')."""
    import torch

    if cuda:
        return {"peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_of": "torch.cuda.max_memory_allocated",
                "reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    return {"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "peak_of": "ru_maxrss"}


def environment(cuda: bool) -> dict:
    """What ran it, for the record beside the numbers."""
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "versions": versions}


def run_json(cmd: list[str]) -> dict:
    """A subprocess's last stdout line as JSON, or its error tail (one failed mode keeps the others)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_json(path: Path, data: dict) -> None:
    """Temp + rename, rewritten after every mode, so a run cut short still leaves what it measured."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def shape_arg_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the --shape options, one line each, before anything is built."""
    problems = [f"--shape {name!r} is unknown; use {', '.join(SHAPES)}"
                for name in (s.strip() for s in args.shape.split(",")) if name not in SHAPES]
    if not seq_lens(args.seq_len):
        problems.append(f"--seq-len {args.seq_len!r}: give positive whole numbers, e.g. 512,2048")
    if args.steps <= args.warmup:
        problems.append(f"--steps {args.steps} must exceed --warmup {args.warmup} (warm-up steps are not timed)")
    return problems


def shape_bench(args: argparse.Namespace) -> None:
    """Every mode on every requested shape, one subprocess each; a table per shape (and --json)."""
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    modes = SHAPE_MODES if args.device == "cuda" else CPU_SHAPE_MODES
    if args.modes:  # e.g. lora,qlora at 8b, where full FT's fp32 weights + AdamW (~128 GB) do not fit
        modes = tuple(m for m in modes if m in args.modes.split(","))
    report = {"device": args.device, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
              "seq_len": args.seq_len, "precision": GPU_PRECISION if args.device == "cuda" else "fp32",
              "grad_ckpt": args.grad_ckpt, "shapes": {}}
    common = ["--device", args.device, "--steps", str(args.steps), "--batch", str(args.batch),
              "--seq-len", args.seq_len, "--warmup", str(args.warmup)] + (["--grad-ckpt"] if args.grad_ckpt else [])
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as tmp:
        for shape in shapes:
            base = Path(tmp) / shape
            entry = report["shapes"][shape] = run_json([sys.executable, __file__, "--build", shape, "--base", str(base),
                                                        "--device", args.device]) | {"modes": {}}
            for mode in modes if "error" not in entry else ():
                entry["modes"][mode] = run_json([sys.executable, __file__, "--shape-worker", mode,
                                                 "--base", str(base), *common])
                print(f"{shape} {mode}: {json.dumps(entry['modes'][mode].get('runs') or entry['modes'][mode])[:400]}",
                      file=sys.stderr, flush=True)
                if args.json:
                    write_json(args.json, report)
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        write_json(args.json, report)
    for shape, entry in report["shapes"].items():
        print_shape_table(shape, entry, report)


def print_shape_table(shape: str, entry: dict, report: dict) -> None:
    """Peak memory and tok/s side by side, as ratios to full FT (and to pure-bf16 full FT on a GPU)."""
    if "error" in entry:
        print(f"shape {shape}: build failed: {entry['error'].splitlines()[-1]}")
        return
    ok = {m: r for m, r in entry["modes"].items() if "error" not in r}
    device = next((r["env"]["device"] for r in ok.values()), report["device"])
    print(f"\nshape {shape} ({entry['params'] / 1e6:,.1f}M params, random init), {device}, "
          f"{report['steps']} steps ({report['warmup']} warm-up) × batch {report['batch']}, "
          f"gradient checkpointing {'on' if report.get('grad_ckpt') else 'off'}")
    print(f"{'seq':>5} {'mode':9} {'trainable':>13} {'loaded MiB':>10} {'peak MiB':>9} {'× full':>7} {'× f-bf16':>8} "
          f"{'tok/s':>9} {'× full':>7}")
    for n in seq_lens(report["seq_len"]):
        full, bf16 = (ok[m]["runs"][str(n)] if m in ok else None for m in ("full", "full-bf16"))
        for mode, r in entry["modes"].items():
            if "error" in r:
                print(f"{n:>5} {mode:9} failed: {r['error'].splitlines()[-1][:100]}")
                continue
            run = r["runs"][str(n)]
            loaded = f"{r['loaded_mb']:>10.0f}" if r.get("loaded_mb") is not None else f"{'-':>10}"
            print(f"{n:>5} {mode:9} {r['trainable_params']:>13,} {loaded} {run['peak_mb']:>9.0f} "
                  f"{ratio(run, full, 'peak_mb'):>7} {ratio(run, bf16, 'peak_mb'):>8} {run['tokens_per_s']:>9.0f} "
                  f"{ratio(run, full, 'tokens_per_s'):>7}")


def ratio(result: dict, reference: dict | None, key: str) -> str:
    return f"{result[key] / reference[key]:.2f}" if reference else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--base", type=Path, default=REPO / ".cache" / "tests" / "base" / "smollm2-135m-instruct")
    parser.add_argument("--worker", choices=MODES)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", help=f"comma-separated random-init shapes: {', '.join(SHAPES)}")
    parser.add_argument("--seq-len", default="512",
                        help="tokens per sequence, comma-separated for several (--shape only)")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of tok/s (--shape only)")
    parser.add_argument("--json", type=Path, help="also write the results here (--shape only)")
    parser.add_argument("--grad-ckpt", action="store_true",
                        help="gradient checkpointing in every mode (--shape only)")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--modes", help=f"comma-separated subset of {', '.join(SHAPE_MODES)} (--shape only)")
    parser.add_argument("--shape-worker", choices=SHAPE_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base, args.steps, args.batch)))
        return
    if args.build:
        build_random_base(args.build, args.base, args.device)
        return
    if args.shape_worker:
        print(json.dumps(shape_worker(args.shape_worker, args.base, args)))
        return
    if args.shape:
        for problem in shape_arg_problems(args):
            parser.error(problem)
        shape_bench(args)
        return
    if args.device != "cpu":
        parser.error("--device cuda needs --shape (the embedded-base run is the CPU baseline)")
    if not (args.base / "config.json").is_file():
        sys.path.insert(0, str(REPO))
        from tests.fixtures.models import embedded_base_dir

        args.base = embedded_base_dir()
    results = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                               "--batch", str(args.batch), "--base", str(args.base)],
                              capture_output=True, text=True, check=True)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full = results["full"]
    print(f"base {args.base.name}, {args.steps} steps × batch {args.batch}, data {DATA.relative_to(REPO)}")
    print(f"{'mode':6} {'trainable':>12} {'peak RSS MB':>12} {'× full':>7} {'tok/s':>8} {'× full':>7} {'cpu s':>7}")
    for mode, r in results.items():
        mem_ratio = r['peak_rss_mb'] / full['peak_rss_mb']
        print(f"{mode:6} {r['trainable_params']:>12,} {r['peak_rss_mb']:>12.0f} {mem_ratio:>7.2f} "
              f"{r['tokens_per_s']:>8.1f} {r['tokens_per_s'] / full['tokens_per_s']:>7.2f} {r['cpu_s']:>7.1f}")


if __name__ == "__main__":
    main()
