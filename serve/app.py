"""`create_app(settings)`: the gateway FastAPI app; services are built here and kept on app.state."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from lorafleet.serve.auth import Authenticator
from lorafleet.serve.canary import CanaryWatcher
from lorafleet.serve.capture import Capture
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.drift import DriftMonitor
from lorafleet.serve.guard import install_guard
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.metrics import count_answer, create_metrics
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import Proxy
from lorafleet.serve.replicas import Replica, ReplicaPool
from lorafleet.serve.residency import ResidencyCollector
from lorafleet.serve.review_grades import ReviewGrades
from lorafleet.serve.routes import admin, openai, ops
from lorafleet.serve.routes.openai import error_response
from lorafleet.serve.routing import ReplicaChooser, Router
from lorafleet.serve.state import GatewayState, base_info
from lorafleet.serve.upstream import HttpUpstream
from lorafleet.serve.variants import Variants, router_variant
from lorafleet.serve.vllm_child import ChildSupervisor, ReplicaSet, VllmLaunch, free_port, split_binds
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafleet.registry import Registry

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings, *, upstreams: list[HttpUpstream] | None = None, replicas: int = 1,
               key_store: KeyStore | None = None,
               review_transport: httpx.BaseTransport | None = None) -> FastAPI:
    """Build the gateway. `upstreams` (tests) replaces both --upstream and the vLLM children;
    `replicas` local vLLM children are started otherwise (unless --upstream), each supervised."""
    settings.check(child=upstreams is None)
    state = build_state(settings, upstreams=upstreams, replicas=replicas, key_store=key_store,
                        review_transport=review_transport)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="lorafleet gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = state
    for module in (openai, ops, admin):
        app.include_router(module.router)
    _install_error_handlers(app)
    install_guard(app, state)  # auth of /admin/* and /metrics and the body limit, before any body is read
    return app


def build_state(settings: ServeSettings, *, upstreams: list[HttpUpstream] | None, replicas: int = 1,
                key_store: KeyStore | None, review_transport: httpx.BaseTransport | None) -> GatewayState:
    metrics_registry = CollectorRegistry()
    metrics = create_metrics(metrics_registry)
    launches: list[VllmLaunch] = []
    if upstreams is None:
        upstreams, launches = _upstreams(settings, replicas)
    base_name = settings.base_name or settings.base_dir.resolve().name
    registry = Registry(settings.registry_dir)
    routing = settings.routing
    router = Router(registry, base_name, ttl=routing.registry_ttl, variant_of=router_variant)
    fleet = [Replica.from_settings(u, routing, metrics=metrics, base_name=base_name) for u in upstreams]
    pool = ReplicaPool(fleet, interval=routing.health_interval)
    chooser = ReplicaChooser.from_settings(fleet, routing)
    chooser.on_decision = lambda replica, why: metrics.routing_decisions.labels(replica, why).inc()
    metrics_registry.register(ResidencyCollector(registry, pool.replicas))  # computed at each scrape
    supervisors = [ChildSupervisor(launch, replica) for launch, replica in zip(launches, fleet, strict=False)]
    supervisor = supervisors[0] if len(supervisors) == 1 else ReplicaSet(supervisors) if supervisors else None
    auth, review = settings.auth, settings.review
    if key_store is None and not auth.no_auth:
        key_store = KeyStore(settings.db_url)
    if auth.no_auth:
        log.warning("AUTHENTICATION IS OFF (--no-auth): anyone who can reach %s:%s may use every adapter",
                    settings.host, settings.port)
    token = review.secret()
    capture = Capture.from_settings(review, settings.spool_path, metrics, transport=review_transport)
    drift = DriftMonitor.from_settings(registry, metrics, settings.drift_monitor)
    grades = None
    if review.url and review.poll_interval > 0:
        grades = ReviewGrades(review.url, token or "", review.queue, metrics,
                              interval=review.poll_interval, window=settings.drift_monitor.window,
                              transport=review_transport)
    # QLoRA adapters go to replicas of their own base variant, started on first use (serve/variants.py)
    variants = Variants(settings, pool=pool, chooser=chooser, metrics=metrics, base_name=base_name,
                        children=bool(launches))
    canary = CanaryWatcher.from_settings(registry, metrics_registry, settings.canary, review,
                                         who=f"gateway:{socket.gethostname()}:{settings.port}",
                                         review_transport=review_transport, probe_warnings=metrics.probe_warnings)
    proxy = Proxy(router=router, chooser=chooser, metrics=metrics, capture=capture,
                  max_in_flight=auth.max_in_flight, drift=drift, variants=variants, canary=canary)
    return GatewayState(settings=settings, registry=registry, router=router, pool=pool, chooser=chooser,
                        auth=Authenticator.from_settings(key_store, auth),
                        metrics=metrics, metrics_registry=metrics_registry, capture=capture, proxy=proxy,
                        key_store=key_store, supervisor=supervisor, base_info=base_info(settings.base_dir),
                        drift=drift, review_grades=grades, variants=variants, canary=canary)


def _upstreams(settings: ServeSettings, children: int) -> tuple[list[HttpUpstream], list[VllmLaunch]]:
    """The --upstream servers, or `children` vLLM children to start (each its own port, key and log)."""
    up = settings.upstream
    if up.urls:
        return [up.client(f"u{i}", url, up.key()) for i, url in enumerate(up.urls)], []
    base_dir = settings.base_dir.resolve()
    upstreams, launches, ports = [], [], set()
    binds = split_binds(settings.vllm.omp_bind, children)  # "all": each child its own share of the cores
    for i in range(children):
        port = free_port()
        while port in ports:  # free_port() may hand out a just-released port again
            port = free_port()
        ports.add(port)
        name, log_name = ("local", "vllm.log") if children == 1 else (f"local{i}", f"vllm-{i}.log")
        launch = settings.child_launch(base_dir, settings.base_name or base_dir.name, log_name, port=port)
        launch.omp_bind = binds[i]
        upstreams.append(up.client(name, f"http://127.0.0.1:{launch.port}", launch.api_key))
        launches.append(launch)
    return upstreams, launches


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; nothing internal reaches the client."""

    # Errors raised out of a route (auth, rate limits, bad bodies, unknown routes) never reached the
    # proxy, which counts the answers it gives: count them here so lorafleet_requests_total has all.
    def _count(request: Request, status: int) -> None:
        count_answer(request.app.state.gateway.metrics, request.url.path, status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        _count(request, exc.status)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        _count(request, 400)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        param = ".".join(str(p) for p in err["loc"] if p != "body") or None
        return error_response(ApiError(400, f"invalid request: {param or 'body'}: {err['msg']}", param=param,
                                       code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        _count(request, exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail),
                                       code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        _count(request, 500)
        return error_response(ApiError(500, "internal gateway error (logged)", type_="server_error",
                                       code="internal_error"))
