"""Self-contained HTML pages: figures embedded as base64 PNG, no file beside the page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from matplotlib.figure import Figure

Section = tuple[str, str]  # (heading, html)


def png(fig: Figure) -> str:
    """An <img> of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return img_bytes(buf.getvalue())


def img_file(path: Path) -> str:
    """An <img> of a PNG file."""
    return img_bytes(path.read_bytes())


def img_bytes(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def table(header: list[str], rows: list[list[str]]) -> str:
    """A table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, summary: str, sections: list[Section]) -> str:
    body = "".join(f"<h2>{h}</h2>{content}" for h, content in sections)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
        "td,th{padding:0 8px;font-family:monospace;text-align:left}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{summary}</p>{body}</body></html>"
    )
