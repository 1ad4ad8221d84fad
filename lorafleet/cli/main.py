"""The one `lorafleet` command: groups per part, errors as one line and exit code 2."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from lorafleet import __version__
from lorafleet.cli import adapters, base, data, eval, keys, review, serve, train
from lorafleet.cli.common import err_console, load_settings
from lorafleet.errors import LorafleetError


def build_app() -> typer.Typer:
    """Assemble the CLI; each group lives in its own module."""
    app = typer.Typer(
        name="lorafleet",
        help="One base model, many LoRA adapters: data → train → serve → evaluate → review.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        data_dir: Annotated[Path | None, typer.Option(help="Data folder (registry, db, caches).",
                                                      envvar=None)] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        ctx.obj = load_settings(data_dir=data_dir)

    @app.command()
    def version() -> None:
        """Print lorafleet's version."""
        typer.echo(__version__)

    app.add_typer(base.app, name="base", help="Prepare and inspect the base model.")
    app.add_typer(data.app, name="data", help="Check, split, convert, fix and augment datasets.")
    app.add_typer(train.app, name="train", help="Train a LoRA/QLoRA adapter and register it.")
    app.add_typer(adapters.app, name="adapters", help="The adapter registry: list, show, alias, import, rm.")
    app.add_typer(serve.app, name="serve", help="The OpenAI-compatible multi-LoRA gateway.")
    app.add_typer(eval.app, name="eval", help="Evaluation suites, metrics, statistics, gates, reports.")
    app.add_typer(review.app, name="review", help="The human review web app.")
    app.add_typer(keys.app, name="keys", help="API keys for the gateway.")
    return app


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exits, usage errors, aborts): typer >= 0.29 vendors its own click, older ones use click itself."""
    exits: list[type] = [click.exceptions.Exit, typer.Exit]
    usage: list[type] = [click.ClickException]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        usage.append(vendored.ClickException)
    return tuple(dict.fromkeys(exits)), tuple(dict.fromkeys(usage)), tuple(dict.fromkeys(aborts))


EXITS, USAGE_ERRORS, ABORTS = _click_classes()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors print one line (exit 2), never a traceback."""
    app = build_app()
    try:
        result = app(args=argv, standalone_mode=False)
    except LorafleetError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True, soft_wrap=True)
        if exc.hint:
            err_console.print(f"  fix: {exc.hint}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except EXITS as exc:
        sys.exit(exc.exit_code)
    except USAGE_ERRORS as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (*ABORTS, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
