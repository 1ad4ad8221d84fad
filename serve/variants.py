"""Base variants in the gateway: every adapter is served on the base variant it was trained on.

A QLoRA adapter (card `trained_on.variant` nf4, or `lora.quantization` nf4 on older cards) goes to
replicas of the `nf4` variant only: vLLM servers named with `--variant-upstream nf4=URL`, or one
supervised vLLM child that the gateway starts the first time such an adapter is asked for — on the
base's dequantised-nf4 twin (CPU, `lorafleet base prepare --variant nf4`) or on the base itself
under vLLM's own bitsandbytes load (GPU). When none can be had the request is refused with a 503 in
OpenAI's shape naming the variant: never served on the full-precision base it was not trained on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lorafleet.serve.config import ServeSettings
from lorafleet.serve.metrics import Metrics
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.replicas import DEFAULT_VARIANT, Replica, ReplicaPool
from lorafleet.serve.routing import ReplicaChooser, Target
from lorafleet.serve.upstream import HttpUpstream
from lorafleet.serve.vllm_child import ChildSupervisor, VllmLaunch, free_port

from lorafleet.base_variants import FULL, ServingBase, serving_base, variant_of
from lorafleet.errors import LorafleetError
from lorafleet.registry import ResolvedAdapter

log = logging.getLogger(__name__)

# After a failed start, requests for that variant are refused at once for this long (then it is tried again).
RETRY_AFTER_FAILURE_S = 30.0


def router_variant(resolved: ResolvedAdapter) -> str:
    """The replica variant that serves an adapter (the Router's `variant_of`): the base's own for LoRA."""
    variant = variant_of(resolved.card)
    return DEFAULT_VARIANT if variant == FULL else variant


def variant_unavailable(variant: str, why: str) -> ApiError:
    return ApiError(503, f"no upstream serves base variant {variant!r}, the base this adapter was trained on "
                         f"({why}); it is not served on another base", type_="server_error",
                    code="variant_unavailable", param="model")


def variant_launch(settings: ServeSettings, serving: ServingBase, base_name: str) -> VllmLaunch:
    """The vLLM child for one variant: the gateway's own launch settings on that variant's base folder."""
    return settings.child_launch(serving.path, base_name, f"vllm-{serving.variant}.log", port=free_port(),
                                 extra_args=serving.vllm_args)


StartChild = Callable[[str, ServingBase], Awaitable[tuple[HttpUpstream, ChildSupervisor | None]]]


class Variants:
    """The replicas of base variants other than the gateway's own, and their lazy start."""

    def __init__(self, settings: ServeSettings, *, pool: ReplicaPool, chooser: ReplicaChooser, metrics: Metrics,
                 base_name: str, children: bool) -> None:
        self.settings = settings
        self.pool = pool
        self.chooser = chooser
        self.metrics = metrics
        self.base_name = base_name
        # whether a variant without a configured upstream may get a vLLM child of its own
        self.children = children and settings.upstream.variant_children
        self.supervisors: list[ChildSupervisor] = []
        self.start_child: StartChild = self._start_child  # tests put a fake here
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        key = settings.upstream.key()
        for variant, urls in settings.upstream.variant_urls().items():
            for i, url in enumerate(urls):
                self.attach(settings.upstream.client(f"{variant}-{i}", url, key), variant)

    def attach(self, upstream: HttpUpstream, variant: str) -> Replica:
        """Route `variant`'s adapters to this upstream too (health-checked with the others)."""
        replica = Replica.from_settings(upstream, self.settings.routing, metrics=self.metrics,
                                        base_name=self.base_name, variant=variant)
        self.pool.replicas.append(replica)
        if self.chooser.replicas is not self.pool.replicas:
            self.chooser.replicas.append(replica)
        self.chooser.ring.add(replica.name)
        return replica

    def serves(self, variant: str) -> bool:
        return any(r.variant == variant for r in self.pool.replicas)

    async def ensure(self, target: Target) -> None:
        """Make sure some replica serves the target's variant (starting its child on first use), else 503.
        Whether one is ready right now is the chooser's to say."""
        variant = target.variant
        if variant == DEFAULT_VARIANT:
            return
        starting = self._starting.get(variant)
        if starting is None and self.serves(variant):
            return
        if starting is None:
            if not self.children:
                raise variant_unavailable(variant, f"pass --variant-upstream {variant}=URL: this gateway starts "
                                                   "no vLLM child for it (it runs on --upstream, or "
                                                   "LORAFLEET_VARIANT_CHILDREN is off)")
            failed = self._failed.get(variant)
            if failed is not None and failed[0] > time.monotonic():
                raise variant_unavailable(variant, failed[1])
            starting = asyncio.get_running_loop().create_task(self._start(target))
            self._starting[variant] = starting
            starting.add_done_callback(lambda _t: self._starting.pop(variant, None))
        # shield: a client that goes away must not cancel a start other requests wait for
        await asyncio.shield(starting)

    async def _start(self, target: Target) -> None:
        variant = target.variant
        assert target.adapter_ref is not None
        try:
            serving = serving_base(target.adapter_ref.card, base=self.settings.base_dir,
                                   data_dir=self.settings.data_dir, engine=self.settings.engine)
            log.warning("starting a vLLM child for base variant %s on %s %s (60-90 s on CPU)…", variant,
                        serving.path, " ".join(serving.vllm_args))
            upstream, supervisor = await self.start_child(variant, serving)
        except (LorafleetError, OSError) as exc:
            if isinstance(exc, LorafleetError):
                why = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
            else:
                why = f"the vLLM child could not be started ({exc.__class__.__name__}: {exc.strerror or exc})"
            self._failed[variant] = (time.monotonic() + RETRY_AFTER_FAILURE_S, why)
            log.error("no upstream for base variant %s: %s", variant, why)
            raise variant_unavailable(variant, why) from None
        if supervisor is not None:
            self.supervisors.append(supervisor)
        replica = self.attach(upstream, variant)
        await replica.check()
        self._failed.pop(variant, None)

    async def _start_child(self, variant: str, serving: ServingBase) -> tuple[HttpUpstream, ChildSupervisor]:
        launch = variant_launch(self.settings, serving, self.base_name)
        upstream = self.settings.upstream.client(f"{variant}-local", f"http://127.0.0.1:{launch.port}",
                                                 launch.api_key)
        watched = _Pending()
        supervisor = ChildSupervisor(launch, watched)
        try:
            await supervisor.start()
        except BaseException:
            await supervisor.stop()
            await upstream.aclose()
            raise
        watched.replica_of = lambda: self.pool.get(upstream.name)
        return upstream, supervisor

    async def stop(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)


class _Pending:
    """What the supervisor marks down when its child dies: the replica, once it is attached."""

    def __init__(self) -> None:
        self.replica_of: Callable[[], Replica | None] = lambda: None

    def mark_down(self) -> None:
        replica = self.replica_of()
        if replica is not None:
            replica.mark_down()
