"""Reports rendered from a scored run: JSON (stable schema), Markdown (PR comment), HTML."""

from lorafleet.evaluate.report.html import render_html
from lorafleet.evaluate.report.markdown import render_markdown

__all__ = ["render_html", "render_markdown"]
