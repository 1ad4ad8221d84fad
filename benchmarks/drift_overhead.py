"""Per-request cost of the gateway's drift bookkeeping (serve/drift.py), on this machine.

    python benchmarks/drift_overhead.py [N]

`observe` is what the request path pays (a bounded-queue append); `process` is the worker thread's work
per request (MinHash of the prompt's words, the LSH lookup and candidate check, window updates), and the
gauge refresh once per batch. Uses the support-intents example data as the training set."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from lorafleet.serve.drift import DriftMonitor
from lorafleet.serve.metrics import create_metrics
from prometheus_client import CollectorRegistry

from lorafleet.card import AdapterCard, BaseModelRef, DatasetFile, LoraInfo
from lorafleet.registry import Registry

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support-intents"


def main(n: int = 5000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        src.mkdir()
        (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
        (src / "adapter_model.safetensors").write_bytes(b"x")
        registry = Registry(Path(tmp, "registry"))
        card = AdapterCard(name="a", version="v1", base=BaseModelRef(id="b"),
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]),
                           dataset=[DatasetFile(path=str(DATA / "train.jsonl"), sha256="0" * 64, split="train")],
                           eval_runs=[{"run_id": "r", "created_at": "x", "output_tokens_mean": 10.0,
                                       "label_pattern": r"\[Intent:\s*([^\]]+?)\s*\]", "labels": ["order_status"]}])
        registry.register("a", src, card)
        monitor = DriftMonitor(registry, create_metrics(CollectorRegistry()), queue_size=n + 1)
        prompts = [json.loads(line)["messages"][:1] for line in (DATA / "test.jsonl").read_text().splitlines()]
        start = time.perf_counter()
        monitor.observe("a", "v1", prompts[0], "[Intent: order_status] ok", 9)
        monitor.process_pending()
        print(f"profile build (326 training prompts): {(time.perf_counter() - start) * 1e3:.1f} ms, once per version")
        start = time.perf_counter()
        for i in range(n):
            monitor.observe("a", "v1", prompts[i % len(prompts)], "[Intent: order_status] ok", 9)
        observe_us = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        while monitor.process_pending(512):
            pass
        process_us = (time.perf_counter() - start) / n * 1e6
        print(f"observe (request path): {observe_us:.2f} us/request")
        print(f"process (worker thread, batches of 512): {process_us:.1f} us/request")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
