"""Peak memory and training tokens/s: full fine-tuning vs LoRA vs QLoRA.

    .venv/bin/python benchmarks/train.py [--steps 6] [--batch 4] [--base DIR]
    python3 benchmarks/train.py --device cuda --shape 135m,1.7b [--seq-len 512] [--grad-ckpt] [--json OUT.json]
    .venv/bin/python benchmarks/train.py --vs-trl [--config examples/train/support-intents.yaml] [--steps 20]
        [--repeat 2] [--set padding_free=false ...] [--trl-bf16]

--vs-trl: `lorafleet train`'s trainer (recipe.build_trainer with the config's levers) against stock
`trl.SFTTrainer` on the same rows, model build, LoRA init, steps, batch, lr and schedule, each side
in its own subprocess (alternating order when repeated): steady tok/s of real (non-pad) tokens and
the val loss, scored alike for both (see vs_worker and scored_val_loss), then the ratio.

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


# --- lorafleet train vs plain TRL (--vs-trl): issue 19 ------------------------------------------

VS_CONFIG = REPO / "examples" / "train" / "support-intents.yaml"
VS_SIDES = ("trl", "lorafleet")


def parse_sets(items: list[str]) -> dict:
    """--set key=value (TrainConfig fields; YAML-typed values) → overrides for the lorafleet side."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: use key=value, e.g. --set padding_free=false")
        out[key.strip()] = yaml.safe_load(value)
    return out


def vs_worker(side: str, args: argparse.Namespace) -> dict:
    """One side's training run: the same data, model build, LoRA init, steps, batch, lr and schedule.

    lorafleet: `lorafleet train`'s own trainer (lorafleet.train.recipe.build_trainer, the config's
    levers). trl: stock `trl.SFTTrainer` + `SFTConfig` with TRL's defaults, except what defines the
    training problem (batch, steps, lr, schedule, max_length, seed) and gradient checkpointing, off
    on both sides (TRL turns it on by default: ~1.7× slower here, and not what we compare)."""
    import torch
    from lorafleet.train import dataset
    from lorafleet.train.config import load_config
    from lorafleet.train.model import load_base, load_tokenizer, lora_config, qlora_on_twin
    from lorafleet.train.precision import use_bf16
    from lorafleet.train.recipe import apply_max_lengths, build_trainer, setup_compute
    from lorafleet.train.tracking import Tracker
    from peft import get_peft_model
    from rich.console import Console

    overrides = {"max_steps": args.steps, "seed": args.seed, **parse_sets(args.set)}
    twin = overrides.pop("twin", True)  # twin=false: QLoRA through bitsandbytes, as before the nf4-twin lever
    config = load_config(args.config, overrides)
    # No evaluation or checkpoint inside the timed steps (on either side): val loss is scored after.
    config = config.model_copy(update={"eval_steps": args.steps + 1, "track": False})
    base = args.base
    tokenizer = load_tokenizer(base)
    train_ex, val_ex = dataset.prepare(config.train, config.val, system_prompt=config.system_prompt)
    train_ex, val_ex, _ = apply_max_lengths(config, tokenizer, train_ex, val_ex)
    bf16 = use_bf16(config.precision) if side == "lorafleet" else False
    if side == "lorafleet":
        setup_compute(config)
    # QLoRA on CPU: lorafleet trains LoRA on the nf4 twin (lorafleet.train.model.qlora_on_twin), TRL through bnb.
    on_twin = side == "lorafleet" and twin and qlora_on_twin(config.qlora)
    weights = prepare_twin(base) if on_twin else base
    torch.manual_seed(config.seed)  # the same LoRA init on both sides
    model = get_peft_model(load_base(weights, qlora=config.qlora and not on_twin, bf16=bf16), lora_config(config))
    with tempfile.TemporaryDirectory(prefix="lorafleet-vs-trl-") as tmp:
        if side == "lorafleet":
            trainer, _ = build_trainer(config, model, tokenizer, train_ex, val_ex, Path(tmp), Tracker(None),
                                       Console(stderr=True), False, bf16=bf16)
        else:
            trainer = stock_trl_trainer(config, model, tokenizer, train_ex, val_ex, Path(tmp), args.trl_bf16)
        clock = step_clock(trainer)
        trainer.add_callback(clock)
        trainer.train()
    return {"side": side, **clock.figures(), "val_loss": scored_val_loss(trainer, val_ex, config.qlora and not on_twin),
            "train_loss_last": round(trainer.state.log_history[-1].get("train_loss", float("nan")), 4),
            "config": {k: v for k, v in config.hyperparameters().items() if k in LEVER_FIELDS},
            "precision": "bf16" if bf16 else ("bf16 autocast" if side == "trl" and args.trl_bf16 else "fp32"),
            "qlora": ("nf4 twin" if on_twin else "bitsandbytes") if config.qlora else None,
            "threads": torch.get_num_threads()}


# The recipe's speed settings (TrainConfig fields) reported with each lorafleet run.
LEVER_FIELDS = ("padding_free", "group_by_length", "threads", "dataloader_workers", "precision", "packing")


def stock_trl_trainer(config, model, tokenizer, train_ex, val_ex, out: Path, bf16: bool):
    """Plain TRL as its docs show it, on the very same PEFT model and rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, max_steps=config.max_steps, warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear", max_length=config.max_length, report_to="none", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, use_cpu=True, gradient_checkpointing=False,
        bf16=bf16)  # TRL's default is bf16=True (autocast; on CPU too): --trl-bf16 keeps it
    return SFTTrainer(model=model, args=args, processing_class=tokenizer,
                      train_dataset=Dataset.from_list([e.row() for e in train_ex]))


def prepare_twin(base: Path) -> Path:
    """The base's nf4 twin beside it (written once, reused after), as `lorafleet base prepare` makes it."""
    from lorafleet.base_variants import prepare_nf4

    twin = base.parent / f"{base.name}-nf4"
    prepare_nf4(base, twin)
    return twin


def step_clock(trainer):
    """A callback that times every optimiser step and counts the real (non-pad) tokens each one trained on,
    the same way for both trainers (attention-mask ones, or a padding-free row's length)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.tokens: list[int] = []
            self.pending = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())
            self.tokens.append(self.pending)
            self.pending = 0

        def figures(self) -> dict:
            # The first step pays for allocation and first-call dispatch on both sides: left out of tok/s.
            steady = [b - a for a, b in zip(self.marks[1:], self.marks[2:], strict=False)]
            timed = sum(self.tokens[1:])
            return {"steps": len(self.tokens), "tokens": sum(self.tokens), "tokens_timed": timed,
                    "first_step_s": round(self.marks[1] - self.marks[0], 2),
                    "s_per_step": round(sum(steady) / max(len(steady), 1), 3),
                    "tokens_per_s": round(timed / max(sum(steady), 1e-9), 1)}

    clock = StepClock()
    step = trainer.training_step

    def counted(model, inputs, *rest, **kw):
        clock.pending += real_tokens(inputs)
        return step(model, inputs, *rest, **kw)

    trainer.training_step = counted
    return clock


def real_tokens(inputs: dict) -> int:
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["position_ids"].size(-1)) * int(inputs["position_ids"].size(0))


def scored_val_loss(trainer, val_ex, qlora: bool) -> float | None:
    """Token-weighted NLL of the answer tokens of val, scored the same way for both sides: TRL's own
    tokenisation (unpacked), padded batches of 8, the model's own forward and loss, in fp32."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if not val_ex:
        return None
    model = trainer.model
    model.eval()
    if not qlora:
        model.float()  # a bf16-trained adapter is scored as vLLM serves it here: fp32
    rows = SFTTrainer._prepare_dataset(trainer, Dataset.from_list([e.row() for e in val_ex]), trainer.processing_class,
                                       trainer.args, False, None, "val-score")
    collate = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)
    keep = [c for c in ("input_ids", "labels") if c in rows.column_names]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 8):
            batch = collate([{k: rows[j][k] for k in keep} for j in range(i, min(i + 8, len(rows)))])
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
            total += float(loss) * n
            count += n
    return round(total / count, 4) if count else None


def variant_argv(variant: str, args: argparse.Namespace) -> list[str]:
    """A --variant as worker flags: `trl`, `trl-bf16` (TRL's default bf16 autocast), `lorafleet`, or
    `lorafleet:field=value,field=value` (train-config overrides on top of --set)."""
    side, _, sets = variant.partition(":")
    if side not in ("trl", "trl-bf16", "lorafleet"):
        raise SystemExit(f"--variant {variant!r}: use trl, trl-bf16, lorafleet or lorafleet:field=value,...")
    if side.startswith("trl"):
        return ["--vs-worker", "trl"] + (["--trl-bf16"] if side == "trl-bf16" or args.trl_bf16 else [])
    extra = [s for s in sets.split(",") if s]
    return ["--vs-worker", "lorafleet"] + [a for s in [*(args.set or []), *extra] for a in ("--set", s)]


def vs_trl(args: argparse.Namespace) -> None:
    """Every variant in its own subprocess, the order reversed on every other repeat; a table, and each
    run's tok/s and val loss against the first TRL variant's (the mean over repeats)."""
    variants = args.variant or ["trl", "lorafleet"]
    common = ["--config", str(args.config), "--steps", str(args.steps), "--seed", str(args.seed),
              "--base", str(args.base)]
    load_before = os.getloadavg()
    runs: list[dict] = []
    for r in range(args.repeat):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            result = run_json([sys.executable, __file__, *variant_argv(variant, args), *common])
            runs.append(result | {"variant": variant})
            print(f"{variant}: {json.dumps(result)[:600]}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"config {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}, "
          f"{args.steps} steps, seed {args.seed}, set {args.set or '-'}; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}")
    ok = [r for r in runs if "error" not in r]
    trl_name = next((v for v in variants if v.startswith("trl")), None)
    ref = [r for r in ok if r["variant"] == trl_name]
    ref_tps = sum(r["tokens_per_s"] for r in ref) / len(ref) if ref else None
    ref_val = sum(r["val_loss"] for r in ref) / len(ref) if ref else None
    print(f"{'variant':44} {'precision':14} {'s/step':>7} {'tok/s':>7} {'× TRL':>6} {'val loss':>9} {'Δ val':>8}")
    for r in runs:
        if "error" in r:
            print(f"{r['variant']:44} failed: {r['error'].splitlines()[-1][:160]}")
            continue
        speed = f"{r['tokens_per_s'] / ref_tps:.2f}" if ref_tps else "-"
        delta = f"{r['val_loss'] - ref_val:+.4f}" if ref_val is not None else "-"
        print(f"{r['variant']:44} {r['precision']:14} {r['s_per_step']:>7.2f} {r['tokens_per_s']:>7.1f} "
              f"{speed:>6} {r['val_loss']:>9.4f} {delta:>8}")
    for variant in variants:
        mine = [r for r in ok if r["variant"] == variant]
        if mine and ref_tps and len(runs) > len(variants):
            tps = sum(r["tokens_per_s"] for r in mine) / len(mine)
            print(f"mean over {len(mine)}: {variant}: {tps:.1f} tok/s, {tps / ref_tps:.2f}x {trl_name}")
    if args.json:
        write_json(args.json, {"runs": runs, "load_before": load_before, "load_after": load_after,
                               "args": {k: str(v) for k, v in vars(args).items()}})


def embedded_base() -> Path:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.models import embedded_base_dir

    return embedded_base_dir()


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
    parser.add_argument("--vs-trl", action="store_true",
                        help="lorafleet train's trainer vs plain TRL SFTTrainer: tok/s and val loss side by side")
    parser.add_argument("--config", type=Path, default=VS_CONFIG, help="train YAML (--vs-trl)")
    parser.add_argument("--seed", type=int, default=0, help="--vs-trl")
    parser.add_argument("--repeat", type=int, default=1, help="pairs to run, alternating which side goes first")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a train-config field on the lorafleet side, e.g. padding_free=false")
    parser.add_argument("--trl-bf16", action="store_true", help="TRL with its default bf16=True (autocast)")
    parser.add_argument("--variant", action="append",
                        help="--vs-trl runs, in order: trl, trl-bf16, lorafleet, lorafleet:field=value,... "
                             "(default: trl, lorafleet)")
    parser.add_argument("--vs-worker", choices=VS_SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vs_worker or args.vs_trl:
        args.base = args.base if (args.base / "config.json").is_file() else embedded_base()
        if args.vs_worker:
            print(json.dumps(vs_worker(args.vs_worker, args)))
        else:
            vs_trl(args)
        return
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
        args.base = embedded_base()
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
