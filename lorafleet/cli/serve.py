"""`lorafleet serve`: the OpenAI-compatible multi-LoRA gateway (starts vLLM unless --upstream)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from lorafleet.cli.common import console, err_console, settings_from
from lorafleet.errors import ConfigError

app = typer.Typer(help="The OpenAI-compatible multi-LoRA gateway.", no_args_is_help=False)


def _rates(values: list[str]) -> dict[str, float]:
    rates = {}
    for value in values:
        name, sep, rate = value.partition("=")
        try:
            rates[name] = float(rate) if sep else 1.0
        except ValueError:
            raise ConfigError(f"--capture {value!r}", hint="use NAME=RATE, e.g. support-intents=0.05") from None
    return rates


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    base: Annotated[Path | None, typer.Option(help="Base model HF folder (default: the embedded one).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default 8000).")] = None,
    upstream: Annotated[list[str] | None, typer.Option(
        help="Use this running vLLM server instead of starting one (repeatable).")] = None,
    upstream_api_key: Annotated[str | None, typer.Option(
        help="API key of the --upstream servers (or LORAFLEET_UPSTREAM_API_KEY).")] = None,
    variant_upstream: Annotated[list[str] | None, typer.Option(
        help="VARIANT=URL: a running vLLM for QLoRA adapters' base variant, e.g. nf4=http://127.0.0.1:8101 "
             "serving the nf4 twin (`base prepare --variant nf4`) (repeatable). Default: a vLLM child on the "
             "twin starts the first time a QLoRA adapter is asked for.")] = None,
    no_variant_children: Annotated[bool, typer.Option(
        "--no-variant-children", help="Never start a vLLM child for a base variant: QLoRA adapters without "
                                      "a --variant-upstream get a 503 naming the variant.")] = False,
    base_name: Annotated[str | None, typer.Option(help="Model name clients use for the base.")] = None,
    max_loras: Annotated[int | None, typer.Option(help="Adapters per vLLM batch.")] = None,
    max_lora_rank: Annotated[int | None, typer.Option(help="Largest adapter rank vLLM accepts.")] = None,
    hot_set: Annotated[int | None, typer.Option(help="Adapters kept loaded per upstream (LRU).")] = None,
    pin: Annotated[list[str] | None, typer.Option(help="Adapter ref to load at start and keep (repeatable).")] = None,
    review_url: Annotated[str | None, typer.Option(help="Review app URL for capture.")] = None,
    review_token: Annotated[str | None, typer.Option(help="Review app ingest token.")] = None,
    review_queue: Annotated[str | None, typer.Option(
        help="Review queue captured samples go to (default capture); checked at start.")] = None,
    capture: Annotated[list[str] | None, typer.Option(help="NAME=RATE: capture this share of an adapter's "
                                                           "traffic for review (repeatable).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No keys (loopback host only).")] = False,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="Skip the after-load no-op check.")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Local vLLM children to start, each on its own port; "
                                                       "adapters are routed to a home replica.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the base and every registered adapter behind one OpenAI-compatible endpoint."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from lorafleet.serve.app import create_app
    from lorafleet.serve.config import ServeSettings, flat_name

    core = settings_from(ctx)
    overrides = {
        "base": base, "host": host, "port": port, "upstreams": upstream or None,
        "upstream_api_key": upstream_api_key, "base_name": base_name, "max_loras": max_loras,
        "max_lora_rank": max_lora_rank, "hot_set": hot_set, "pins": pin or None, "review_url": review_url,
        "review_token": review_token, "review_queue": review_queue, "capture": _rates(capture) if capture else None,
        "no_auth": True if no_auth else None, "probe": False if no_probe else None,
        "variant_upstreams": variant_upstream or None, "variant_children": False if no_variant_children else None,
    }
    try:
        env_settings = ServeSettings()
        fields = {k: v for k, v in core.model_dump().items() if k in core.model_fields_set or v is not None}
        settings = ServeSettings.model_validate({**env_settings.model_dump(), **fields,
                                                 **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = flat_name(err["loc"])
        raise ConfigError(f"setting {field!r}: {err['msg']}", hint=f"check --{field.replace('_', '-')}") from None
    if replicas > 1 and settings.upstream.urls:
        raise ConfigError("--replicas with --upstream", hint="--replicas starts local vLLM children; "
                                                           "pass each running server as --upstream instead")
    if settings.review.capture and settings.review.url:
        check_capture_queue(settings)
    application = create_app(settings) if replicas == 1 else create_replicated_app(settings, replicas)
    where = f"http://{settings.host}:{settings.port}"
    if not settings.upstream.urls:
        console.print(f"starting {replicas} vLLM child(ren) on {settings.base_dir} (60-90 s on CPU), "
                      f"then serving on {where}")
    else:
        console.print(f"serving on {where} in front of {', '.join(settings.upstream.urls)}")
    # Keep-alive well above clients' idle timeouts (httpx and the OpenAI SDK: 5 s): with equal timeouts
    # the server may close a connection the client is just reusing (a spurious ReadError).
    # uvloop and httptools (dependencies) are uvicorn's "auto" choice; no access log on the request path.
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=log_level,
                timeout_graceful_shutdown=10, timeout_keep_alive=75, access_log=False)


def check_capture_queue(settings, transport=None) -> None:  # noqa: ANN001 - ServeSettings, imported lazily
    """Exit 2 when the review app answers and refuses the capture queue or token; warn when it is down."""
    from lorafleet.serve.capture import check_review_queue

    review = settings.review
    check = check_review_queue(review.url, review.secret(), review.queue, settings.spool_path,
                               transport=transport)
    if check.refusal is not None:
        r = check.refusal
        what = {"queue_missing": f"capture queue {check.queue!r} does not exist",
                "unauthorized": "the review token is missing, wrong or rotated",
                "forbidden": f"the review token may not use capture queue {check.queue!r} (or it does not exist)",
                "invalid": f"the review app refused the check of queue {check.queue!r}"}[r.reason]
        raise ConfigError(f"--capture: {what} on {review.url} (HTTP {r.status}: {r.message})",
                          hint=r.fix)
    if check.unreachable is not None:
        err_console.print(f"warning: review app {review.url} unreachable ({check.unreachable}); "
                          f"captured samples are spooled to {settings.spool_path} until it answers",
                          highlight=False, soft_wrap=True)


def create_replicated_app(settings, replicas: int, **app_kwargs):  # noqa: ANN001, ANN201 - lazy imports
    """The gateway in front of `replicas` local vLLM children, each under its own supervisor."""
    from lorafleet.serve.app import create_app

    settings.check(child=True)
    return create_app(settings, replicas=replicas, **app_kwargs)
