"""QLoRA adapters served on their matched base (the nf4 twin) vs on the full-precision base, side by side.

    python benchmarks/qlora_matched.py --data-dir D --base BASE \
        --adapter contract-clauses-q=examples/suites/contract-clauses.yaml \
        [--adapter ticket-summaries-q=examples/suites/ticket-summaries.yaml] [--out results.json]

Each ADAPTER must be a registered QLoRA version (`lorafleet train --qlora`). For each one the script
registers a copy labelled as trained on the full base (`<name>-onfull`: the same files, its card saying
variant full), so one gateway serves the adapter both ways: matched on the nf4 vLLM child (started on the
first request: its start time is printed) and on the full-precision child. One suite run per adapter with
both as targets (the suite's own dataset, metrics and generation; paired bootstrap, the full-base copy as
the baseline), then the RSS of each vLLM child's process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from lorafleet.serve.vllm_child import free_port

from lorafleet.card import TrainedOn
from lorafleet.registry import Registry

REPO = Path(__file__).resolve().parents[1]
LORAFLEET = [sys.executable, "-m", "lorafleet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", action="append", required=True, help="NAME=SUITE.yaml")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pairs = [tuple(a.split("=", 1)) for a in args.adapter]
    registry = Registry(args.data_dir / "registry")
    suites = {name: write_suite(Path(suite), name, args.data_dir) for name, suite in pairs}
    for name, _ in pairs:
        register_onfull(registry, name, args.base)
    port = free_port()
    gateway = start_gateway(args.data_dir, args.base, port)
    # a timeout's SIGTERM unwinds through `finally`, so the gateway (and its vLLM children) stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    url = f"http://127.0.0.1:{port}"
    report: dict = {"adapters": {}}
    try:
        wait_ready(url, gateway)
        started = time.perf_counter()
        first = httpx.post(f"{url}/v1/chat/completions", timeout=900, json={
            "model": pairs[0][0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        report["nf4_first_request_s"] = round(time.perf_counter() - started, 1)
        report["nf4_first_request_status"] = first.status_code
        for name, _ in pairs:
            report["adapters"][name] = run_suite(suites[name], url, name, args.concurrency, args.data_dir)
        report["rss_mb"] = children_rss(gateway.pid)
    finally:
        stop(gateway)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


def write_suite(suite: Path, name: str, data_dir: Path) -> Path:
    """The suite with two targets (matched, on the full base), no baselines, review, judge or gates."""
    spec = yaml.safe_load(suite.read_text())
    spec["dataset"]["path"] = str((suite.parent / spec["dataset"]["path"]).resolve())
    spec["targets"] = [f"{name}@latest", f"{name}-onfull@latest"]
    spec["baseline"] = f"{name}-onfull@latest"
    for key in ("baselines", "review", "judge", "gates", "bias"):
        spec.pop(key, None)
    out = Path(tempfile.mkdtemp(prefix="qlora-suite-")) / suite.name
    out.write_text(yaml.safe_dump(spec))
    return out


def register_onfull(registry: Registry, name: str, base: Path) -> None:
    """The same adapter files under `<name>-onfull`, its card saying it was trained on the full base."""
    onfull = f"{name}-onfull"
    if onfull in registry.names():
        return
    resolved = registry.resolve(name)
    card = resolved.card.model_copy(update={
        "name": onfull, "trained_on": TrainedOn(variant="full", path=str(base.resolve())),
        "lora": resolved.card.lora.model_copy(update={"quantization": None}),
        "notes": f"a copy of {resolved.served_name} served on the full-precision base (benchmarks/qlora_matched.py)"})
    registry.register(onfull, resolved.path, card)


def start_gateway(data_dir: Path, base: Path, port: int) -> subprocess.Popen:
    log = open(data_dir / "qlora-gateway.log", "ab")  # noqa: SIM115 - the child writes it
    return subprocess.Popen([*LORAFLEET, "--data-dir", str(data_dir), "serve", "--base", str(base), "--no-auth",
                             "--port", str(port), "--no-probe"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(url: str, gateway: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit("the gateway exited; see qlora-gateway.log in the data dir")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the gateway did not become ready")


def run_suite(suite: Path, url: str, name: str, concurrency: int, data_dir: Path) -> dict:
    out = data_dir / "qlora-eval" / name
    started = time.perf_counter()
    subprocess.run([*LORAFLEET, "--data-dir", str(data_dir), "eval", "run", str(suite), "--endpoint", url,
                    "--concurrency", str(concurrency), "--out", str(out), "--no-push-review", "--no-cache"],
                   cwd=REPO, check=False, stdout=subprocess.DEVNULL,
                   env={**os.environ, "LORAFLEET_EVAL_API_KEY": "none"})
    results = json.loads((out / "results.json").read_text())
    rows = {}
    for target, entry in results["targets"].items():
        metrics = {}
        for metric, m in entry["metrics"].items():
            if isinstance(m, dict) and "value" in m:
                metrics[metric] = {"value": m["value"], "ci": m.get("ci")}
                none = ((m.get("details") or {}).get("per_class") or {}).get("none")
                if none and none.get("support"):
                    metrics["fp_rate_none"] = {"value": 1 - none["recall"], "support": none["support"]}
        rows[target] = {"model": entry.get("model"), "metrics": metrics}
    return {"targets": rows, "comparisons": results.get("comparisons"), "seconds": round(time.perf_counter() - started)}


def children_rss(gateway_pid: int) -> dict[str, float]:
    """RSS (MB) of each vLLM child's process tree, named by the --model it serves."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: dict[str, float] = {}
    for pid, ppid in parents.items():
        if ppid != gateway_pid:
            continue
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        if b"--model" not in cmd:
            continue
        model = cmd[cmd.index(b"--model") + 1].decode()
        out[model] = round(sum(rss_kb(p) for p in tree(pid, parents)) / 1024, 1)
    return out


def tree(root: int, parents: dict[int, int]) -> list[int]:
    found = [root]
    for pid, ppid in parents.items():
        if ppid == root:
            found += tree(pid, parents)
    return found


def rss_kb(pid: int) -> int:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(gateway: subprocess.Popen) -> None:
    if gateway.poll() is None:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
