"""A tiny OpenAI-compatible server on a loopback port (real HTTP) for evaluation tests.

Answers are scripted per model: `answers[model][last user message]`, else `default(model, text)`.
`fail_next` queues HTTP status codes to return before answering normally and `fail_from` makes
every request after the first N fail (fault injection);
`requests` logs every chat request body; `respond(body)` can answer from the whole body (few-shot turns,
structured outputs). `served` maps a requested name to the version reported. `judge(body)` scripts an LLM
judge's replies (consulted first; None: answer as usual) and `reject_response_format` answers 400 to
`response_format`, as an endpoint without structured outputs does.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _echo(model: str, text: str) -> str:
    return f"{model} says: {text[:40]}"


@dataclass
class FakeState:
    base: str = "fake-base"
    adapters: list[str] = field(default_factory=list)
    answers: dict[str, dict[str, str]] = field(default_factory=dict)
    default: Callable[[str, str], str] = _echo
    served: dict[str, str] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)  # alias ref → version, listed like lorafleet's gateway
    fail_next: list[int] = field(default_factory=list)
    fail_from: int | None = None  # every chat request from this index on answers 503
    api_key: str | None = None
    token_logprob: dict[str, float] | None = None  # model → logprob of every prompt token; None: no logprobs
    delay_s: float = 0.0  # per answer, to make concurrency observable
    base_info: dict[str, Any] = field(default_factory=dict)  # the base's `lorafleet` entry, e.g. weights_sha256
    roots: dict[str, str] = field(default_factory=dict)  # model → the `root` /v1/models lists (a LoRA path)
    reject_prompt_logprobs: bool = False  # answer 400 to `prompt_logprobs`, as an endpoint without them does
    respond: Callable[[dict[str, Any]], str | None] | None = None  # whole request body → answer (None: as usual)
    judge: Callable[[dict[str, Any]], str | None] | None = None  # a judge request's body → its reply (None: as usual)
    reject_response_format: bool = False  # answer 400 to `response_format` (no structured outputs)
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": status}}, status_code=status)


def create_app(state: FakeState) -> FastAPI:
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return state.api_key is None or request.headers.get("authorization") == f"Bearer {state.api_key}"

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "bad key")
        data = [{"id": state.base, "object": "model", "root": state.roots.get(state.base, f"/models/{state.base}"),
                 "parent": None, **({"lorafleet": state.base_info} if state.base_info else {})}]
        data += [{"id": a, "object": "model", "root": state.roots.get(a, a), "parent": state.base}
                 for a in state.adapters]
        for entry in data:
            if entry["id"] in state.pins:
                name = entry["id"].split("@")[0]
                entry["lorafleet"] = {"kind": "adapter", "adapter": name, "version": state.pins[entry["id"]]}
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if not authorised(request):
            return _error(401, "bad key")
        body = await request.json()
        with state.lock:
            state.requests.append(body)
            status = state.fail_next.pop(0) if state.fail_next else None
            if state.fail_from is not None and len(state.requests) > state.fail_from:
                status = 503
        if status is not None:
            resp = _error(status, "injected fault")
            if status == 429:
                resp.headers["Retry-After"] = "0"
            return resp
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
        finally:
            with state.lock:
                state.in_flight -= 1
        model = body["model"]
        if model != state.base and model not in state.adapters:
            return _error(404, f"model {model!r} not found")
        text = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if body.get("response_format") is not None and state.reject_response_format:
            return _error(400, "response_format is not supported by this server")
        answer = state.judge(body) if state.judge is not None else None
        if answer is None and state.respond is not None:
            answer = state.respond(body)
        if answer is None:
            answer = state.answers.get(model, {}).get(text)
        if answer is None:
            answer = state.default(model, text)
        if body.get("prompt_logprobs") is not None and state.reject_prompt_logprobs:
            return _error(400, "prompt_logprobs is not supported by this server")
        if body.get("prompt_logprobs") is not None and state.token_logprob is not None:
            return _with_prompt_logprobs(state, model, body)
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": state.served.get(model, model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(answer.split()),
                          "total_tokens": len(text.split()) + len(answer.split())}}

    return app


def _with_prompt_logprobs(state: FakeState, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's shape: `prompt_logprobs` is [None, {token_id: {logprob, rank, decoded_token}}, …];
    here a token is a whitespace-separated word (with its leading space)."""
    words = " ".join(m["content"] for m in body["messages"]).split()
    lp = state.token_logprob.get(model, -1.0) if state.token_logprob else -1.0
    entries: list[Any] = [None] + [{str(i): {"logprob": lp, "rank": 1, "decoded_token": " " + w}}
                                   for i, w in enumerate(words[1:], start=1)]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "."}, "finish_reason": "length"}],
            "prompt_logprobs": entries, "usage": {"prompt_tokens": len(words), "completion_tokens": 1}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    state: FakeState


@contextmanager
def serve(state: FakeState | None = None) -> Iterator[RunningServer]:
    """Run the fake on 127.0.0.1:<free port> in a thread; stopped on exit."""
    state = state or FakeState()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake OpenAI server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    """Run standalone (benchmarks): `python -m tests.fakes.openai_eval_server PORT`."""
    import sys

    uvicorn.run(create_app(FakeState()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
