"""ASGI middleware of the review app: believe X-Forwarded-For only from trusted proxies; bound body sizes."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> list[Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def _trusted(host: str, networks: list[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def forwarded_client(peer: str, forwarded_for: str | None, networks: list[Network]) -> str:
    """The client address: the peer, unless the peer is a trusted proxy; then the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy (entries left of it are client-written)."""
    if not networks or not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


class TrustedProxies:
    """Rewrite the ASGI client address from X-Forwarded-For, only for requests from `trusted` proxies.

    `lorafleet review serve` runs uvicorn with proxy_headers off (its default trusts loopback, which
    let any local client pick its own address and dodge the login limiter); this is the only place a
    forwarded address is believed.
    """

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.networks = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.networks and scope.get("client"):
            peer = scope["client"][0]
            xff = _header(scope, b"x-forwarded-for")
            client = forwarded_client(peer, xff, self.networks)
            if client != peer:
                scope = {**scope, "client": (client, 0)}
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit; FastAPI lets HTTPExceptions through its body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


class BodyLimit:
    """Refuse request bodies over a limit with 413: by Content-Length before reading anything, else by
    counting bytes as they stream in (reading stops at the limit). API paths get `api_bytes`, others
    (browser forms) `form_bytes`."""

    def __init__(self, app: ASGIApp, api_bytes: int, form_bytes: int) -> None:
        self.app = app
        self.api_bytes = api_bytes
        self.form_bytes = form_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/api/")
        limit = self.api_bytes if api else self.form_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _refuse(send, 400, "malformed Content-Length header")
                return
            if int(length) > limit:
                await _refuse(send, 413, f"request body larger than {limit} bytes",
                              hint="send smaller batches" if api else "shorten the text")
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await _refuse(send, 413, str(exc.detail), hint="send smaller batches" if api else "shorten the text")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _refuse(send: Send, status: int, message: str, hint: str | None = None) -> None:
    """An OpenAI-shaped JSON error, sent before the body is read; the connection is closed after it."""
    text = f"{message} ({hint})" if hint else message
    body = json.dumps({"error": {"message": text, "type": "invalid_request_error", "param": None,
                                 "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
