"""Evaluation benchmarks, printed side by side:

1. Generation throughput of the harness (`EvalClient`: cache writes, retries, parsing) vs a bare
   `openai.AsyncOpenAI` client at the same concurrency, against one loopback fake server running
   in its own process. Target: harness >= 0.9x bare.
2. Scoring time for 10,000 stored samples: every metric family plus 1,000-resample bootstrap CIs.

    .venv/bin/python benchmarks/eval.py [--requests 2000] [--concurrency 16] [--samples 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorafleet.evaluate.cache import ResponseCache  # noqa: E402
from lorafleet.evaluate.client import EvalClient  # noqa: E402
from lorafleet.evaluate.dataset import Sample  # noqa: E402
from lorafleet.evaluate.metrics import compute_metrics  # noqa: E402
from lorafleet.evaluate.stats import bootstrap_ci  # noqa: E402

from lorafleet.formats import Message  # noqa: E402
from tests.fakes.openai_eval_server import free_port  # noqa: E402

PARAMS = {"temperature": 0.0, "max_tokens": 16}
WORDS = ["refund", "order", "late", "card", "charge", "shipping", "parcel", "account", "password", "billing",
         "invoice", "courier", "damaged", "replace", "cancel", "subscription", "address", "delivery", "tracking",
         "support"]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_eval_server", str(port)], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("fake server did not start")


def samples(n: int, salt: str) -> list[Sample]:
    return [Sample(id=f"s{i}", messages=[Message(role="user", content=f"{salt} ticket {i}: my order is late")])
            for i in range(n)]


async def bare(url: str, items: list[Sample], concurrency: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(s: Sample) -> None:
        async with sem:
            await client.chat.completions.create(model="fake-base", messages=[m.model_dump() for m in s.messages],
                                                 **PARAMS)

    start = time.perf_counter()
    await asyncio.gather(*(one(s) for s in items))
    elapsed = time.perf_counter() - start
    await client.close()
    return len(items) / elapsed


async def harness(url: str, items: list[Sample], concurrency: int, cache_dir: Path) -> float:
    cache = ResponseCache(cache_dir / f"cache-{time.monotonic_ns()}.sqlite")
    runner = EvalClient(url, concurrency=concurrency, cache=cache)
    start = time.perf_counter()
    await runner.generate("fake-base", items, PARAMS)
    elapsed = time.perf_counter() - start
    cache.close()
    return len(items) / elapsed


def bench_generation(n: int, concurrency: int, rounds: int = 5) -> None:
    proc, url = start_server()
    ratios, bare_rates, harness_rates = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(bare(url, samples(50, "warm"), concurrency))
            for r in range(rounds):  # pairs in alternating order: this machine is noisy
                def run_bare(r: int = r) -> float:
                    return asyncio.run(bare(url, samples(n, f"b{r}"), concurrency))

                def run_harness(r: int = r) -> float:
                    return asyncio.run(harness(url, samples(n, f"h{r}"), concurrency, Path(tmp)))

                if r % 2:
                    h, b = run_harness(), run_bare()
                else:
                    b, h = run_bare(), run_harness()
                bare_rates.append(b)
                harness_rates.append(h)
                ratios.append(h / b)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"generation, {n} requests per side x {rounds} paired rounds, concurrency {concurrency}:")
    print(f"  bare AsyncOpenAI   median {statistics.median(bare_rates):8.1f} req/s   best {max(bare_rates):8.1f}")
    print(f"  lorafleet EvalClient median {statistics.median(harness_rates):8.1f} req/s best {max(harness_rates):8.1f}"
          "   (cache on, fresh)")
    per_round = " ".join(f"{x:.2f}" for x in ratios)
    print(f"  EvalClient / bare, per round: {per_round}   median {statistics.median(ratios):.2f}x")


def bench_scoring(n: int, resamples: int = 1000) -> None:
    rng = random.Random(0)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(n)]
    preds = [" ".join(w if rng.random() < 0.6 else rng.choice(WORDS) for w in r.split()) for r in refs]
    labels = ["billing", "refund", "shipping", "fraud_report", "account"]
    gold = [rng.choice(labels) for _ in range(n)]
    pred_labels = [g if rng.random() < 0.8 else rng.choice([*labels, "INVALID"]) for g in gold]
    print(f"scoring {n} stored samples (metrics, then {resamples}-resample bootstrap CI per metric):")
    total = 0.0
    for family in ("rouge", "bleu", "chrf", "token_f1", "exact_match", "classification"):
        start = time.perf_counter()
        results = compute_metrics({family: {}}, preds, [[r] for r in refs], gold_labels=gold, pred_labels=pred_labels,
                                  labels=labels)
        scored = time.perf_counter() - start
        start = time.perf_counter()
        for m in results.values():
            bootstrap_ci(m.stats, m.aggregate, resamples=resamples, seed=0)
        boot = time.perf_counter() - start
        total += scored + boot
        print(f"  {family:15s} metrics {scored:6.2f} s   bootstrap {boot:6.2f} s   ({', '.join(results)})")
    print(f"  total          {total:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10000)
    args = parser.parse_args()
    bench_generation(args.requests, args.concurrency)
    bench_scoring(args.samples)


if __name__ == "__main__":
    main()
