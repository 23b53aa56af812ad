"""Small HTML building blocks shared by every result's ``_repr_html_`` and by report pages.

All text that comes from prompts, tokenizers or models goes through ``escape``.
"""

import html
from collections.abc import Sequence

from mechlab.errors import InputError


def escape(text: object) -> str:
    """HTML-escape any value's string form, quotes included."""
    return html.escape(str(text), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str = "") -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="mechlab">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(data_uri: str, alt: str) -> str:
    """An ``<img>`` for a ``data:`` URI (never a remote URL)."""
    if not data_uri.startswith("data:image/"):
        raise InputError(f"Expected a data:image/... URI for an offline page, got {data_uri[:30]!r}.")
    return f'<img src="{data_uri}" alt="{escape(alt)}" style="max-width:100%">'
