"""A fake vLLM OpenAI server for unit tests: the same routes (chat, completions, models, LoRA
load/unload), answers you `enqueue()`, a log of every request, and switches for slow loads,
streams that pause, and a "restart" that forgets loaded adapters; `dying_upstream()` is a raw
server whose stream breaks off like a killed vLLM's.

Use in-process through `transport()` (httpx.ASGITransport; note it buffers whole responses) or
on loopback with `serve()` (real uvicorn in a thread) when streaming behaviour matters. It is
also runnable as a process with vLLM's command-line flags, so the supervisor can start it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


@dataclass
class Reply:
    """One queued answer: text (split into word chunks when streamed) or an error status."""

    text: str = "ok"
    status: int = 200
    pause_after: int | None = None  # streaming: wait for `release()` after this many chunks


@dataclass
class Logged:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeUpstream:
    def __init__(self, base_name: str = "base-model", api_key: str | None = "upstream-key") -> None:
        self.base_name = base_name
        self.api_key = api_key
        self.loaded: dict[str, str] = {}
        self.log: list[Logged] = []
        self.replies: deque[Reply] = deque()
        self.load_delay = 0.0
        self.load_gate: asyncio.Event | None = None  # loads wait for it to be set (in-process transport only)
        self.fail_loads = False
        self.same_output = False  # every model answers alike (a no-op adapter, for the probe)
        self.model_replies: dict[str, Reply] = {}  # served name -> its answer, every time (queued replies first)
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self.gate_timeout = 10.0
        self.gate_timed_out = False  # a paused stream was never released (the client saw nothing?)
        self.url: str | None = None
        self._server: uvicorn.Server | None = None
        self.app = self._build()

    # ---- test controls ---------------------------------------------------------------------
    def enqueue(self, text: str = "ok", **kwargs: Any) -> None:
        with self._lock:
            self.replies.append(Reply(text, **kwargs))

    def release(self) -> None:
        self._gate.set()

    def restart(self) -> None:
        """Forget every loaded adapter, as a restarted vLLM would."""
        self.loaded.clear()

    def calls(self, path: str) -> list[Logged]:
        return [entry for entry in self.log if entry.path == path]

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    @contextlib.contextmanager
    def serve(self, port: int = 0) -> Iterator[str]:
        """Run on 127.0.0.1 in a background thread; yields the URL."""
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        sock_port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{sock_port}"
        try:
            yield self.url
        finally:
            self._gate.set()
            server.should_exit = True
            thread.join(10)

    # ---- the app ---------------------------------------------------------------------------
    def _next(self, model: str) -> Reply:
        with self._lock:
            if self.replies:
                return self.replies.popleft()
            if model in self.model_replies:
                return self.model_replies[model]
        return Reply("same answer" if self.same_output else f"{model} says hi")

    def _build(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def _auth_and_log(request: Request, call_next):
            body = await request.body()
            try:
                parsed = json.loads(body) if body else {}
            except json.JSONDecodeError:
                parsed = {"_raw": body.decode("utf-8", "replace")}
            fake.log.append(Logged(request.url.path, parsed, dict(request.headers)))
            if fake.api_key and request.headers.get("authorization") != f"Bearer {fake.api_key}":
                return JSONResponse({"error": {"message": "bad key", "type": "auth", "code": 401}}, 401)
            return await call_next(request)

        @app.get("/v1/models")
        async def models() -> dict:
            ids = [fake.base_name, *fake.loaded]
            return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}

        @app.post("/v1/load_lora_adapter")
        async def load(request: Request) -> Response:
            body = await request.json()
            await asyncio.sleep(fake.load_delay)
            if fake.load_gate is not None:
                await fake.load_gate.wait()
            if fake.fail_loads:
                return _error(500, "cannot load")
            if body["lora_name"] in fake.loaded:
                return _error(400, f"The lora adapter '{body['lora_name']}' has already been loaded.")
            fake.loaded[body["lora_name"]] = body["lora_path"]
            return Response("Success", 200)

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request) -> Response:
            body = await request.json()
            if fake.loaded.pop(body["lora_name"], None) is None:
                return _error(404, "not found")
            return Response("Success", 200)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await fake._complete(await request.json(), chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await fake._complete(await request.json(), chat=False)

        # vLLM's other routes, answered just enough to show what reached them
        @app.post("/tokenize")
        async def tokenize(request: Request) -> Response:
            body = await request.json()
            words = str(body.get("prompt", "")).split()
            return fake._for_model(body, {"tokens": [len(w) for w in words], "count": len(words)})

        @app.post("/detokenize")
        async def detokenize(request: Request) -> Response:
            body = await request.json()
            return fake._for_model(body, {"prompt": " ".join("x" * int(t) for t in body.get("tokens", []))})

        @app.post("/v1/responses")
        async def responses(request: Request) -> Response:
            body = await request.json()
            text = fake._next(str(body.get("model"))).text
            return fake._for_model(body, {"object": "response", "status": "completed", "output": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]})

        return app

    def _for_model(self, body: dict[str, Any], answer: dict[str, Any]) -> Response:
        model = body.get("model", self.base_name)
        if model != self.base_name and model not in self.loaded:
            return _error(404, f"The model `{model}` does not exist.")
        return JSONResponse({"model": model, **answer})

    async def _complete(self, body: dict[str, Any], *, chat: bool) -> Response:
        model = body.get("model")
        if model != self.base_name and model not in self.loaded:
            return _error(404, f"The model `{model}` does not exist.")
        reply = self._next(model)
        if reply.status != 200:
            return _error(reply.status, reply.text)
        usage = {"prompt_tokens": 7, "completion_tokens": len(reply.text.split()),
                 "total_tokens": 7 + len(reply.text.split())}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}} if chat else {
                "index": 0, "text": reply.text}
            return JSONResponse({"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                                 "model": model, "choices": [choice], "usage": usage})
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self._events(model, reply, chat, usage if want_usage else None),
                                 media_type="text/event-stream")

    async def _events(self, model: str, reply: Reply, chat: bool, usage: dict | None):
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            if reply.pause_after is not None and i == reply.pause_after:
                released = await asyncio.to_thread(self._gate.wait, self.gate_timeout)
                self.gate_timed_out = self.gate_timed_out or not released
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            chunk = {"id": "fake-1", "object": "chat.completion.chunk", "model": model, "choices": [choice]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if usage is not None:
            yield f"data: {json.dumps({'id': 'fake-1', 'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"


@contextlib.contextmanager
def dying_upstream(base_name: str, pieces: list[str]) -> Iterator[str]:
    """A raw HTTP server that streams `pieces` as chat chunks and then drops the connection the
    way a killed vLLM does (no final chunk). Answers /v1/models so health checks pass."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if head.startswith(b"GET /v1/models"):
            body = json.dumps({"data": [{"id": base_name}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            chunk = {"id": "x", "object": "chat.completion.chunk", "model": base_name,
                     "choices": [{"index": 0, "delta": {"content": piece}}]}
            data = f"data: {json.dumps(chunk)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
        writer.transport.abort()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["server"] = server
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": None,
                                   "code": status}}, status_code=status)


def main() -> None:
    """Run as a process, accepting vLLM's flags (the supervisor test starts it like vLLM)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="base-model")
    parser.add_argument("--api-key", default=None)
    args, _ = parser.parse_known_args()
    fake = FakeUpstream(args.served_model_name, args.api_key or os.environ.get("VLLM_API_KEY"))
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
