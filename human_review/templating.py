"""Jinja2 environment: autoescape always on; Markdown (guidelines only) rendered with raw HTML off."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from markdown_it import MarkdownIt
from markupsafe import Markup


def make_templates(folder: Path) -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(str(folder)), autoescape=True)
    md = MarkdownIt("commonmark", {"html": False})  # raw HTML in a rubric's Markdown is escaped too

    def markdown(text: str | None) -> Markup:
        return Markup(md.render(text or ""))  # noqa: S704 - markdown-it escapes; html disabled

    env.filters["markdown"] = markdown
    return Jinja2Templates(env=env)
