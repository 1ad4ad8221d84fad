"""`/health` (process alive), `/ready` (an upstream is up with its adapters replayed), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from lorafleet.serve.routes.deps import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    upstreams = {u.name: {"up": u.up, "ready": u.ready} for u in state.pool.replicas}
    ok = state.pool.ready
    return JSONResponse({"ready": ok, "upstreams": upstreams}, status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "2"})


@router.get("/metrics")
async def metrics(state: State) -> Response:
    for upstream in state.pool.replicas:
        state.metrics.upstream_up.labels(upstream.name).set(1 if upstream.ready else 0)
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
