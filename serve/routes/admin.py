"""Admin API (admin keys only): adapters per upstream — list, load, unload, pin — and registry reload."""

from __future__ import annotations

from fastapi import APIRouter
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.routes.deps import AdminKey, State
from pydantic import BaseModel, ConfigDict

router = APIRouter(prefix="/admin")


class AdapterAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    upstream: str | None = None


@router.get("/adapters")
async def list_adapters(state: State, _: AdminKey) -> dict:
    return {"upstreams": [
        {"name": r.name, "url": r.url, "ready": r.ready, "variant": r.variant, "capacity": r.hot.capacity,
         "loaded": list(r.hot.loaded), "pinned": sorted(r.hot.pins)}
        for r in state.pool.replicas]}


@router.post("/adapters/load")
async def load(body: AdapterAction, state: State, _: AdminKey) -> dict:
    served = await state.load(body.model, body.upstream, pin=False)
    return {"loaded": served}


@router.post("/adapters/pin")
async def pin(body: AdapterAction, state: State, _: AdminKey) -> dict:
    served = await state.load(body.model, body.upstream, pin=True)
    return {"pinned": served}


@router.post("/adapters/unpin")
async def unpin(body: AdapterAction, state: State, _: AdminKey) -> dict:
    served = state.router.resolve(body.model).served_name
    for replica in state.select(body.upstream):
        replica.hot.unpin(served)
    return {"unpinned": served}


@router.post("/adapters/unload")
async def unload(body: AdapterAction, state: State, _: AdminKey) -> dict:
    served = state.router.resolve(body.model).served_name
    found = [r.hot for r in state.select(body.upstream) if r.hot.holds(served)]
    if not found:
        raise ApiError(404, f"{served} is not loaded", code="not_loaded", param="model")
    for hot in found:
        await hot.unload(served)
    return {"unloaded": served}


@router.post("/registry/reload")
async def reload_registry(state: State, _: AdminKey) -> dict:
    state.router.clear()
    return {"adapters": state.router.registry.names()}
