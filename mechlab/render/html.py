"""Small HTML building blocks shared by every result's ``_repr_html_`` and by report pages.

All text that comes from prompts, tokenizers or models goes through ``escape``, which also shows
Unicode bidirectional controls as visible codes (``<U+202E>``): left raw, a right-to-left override
in a prompt would reorder the text shown after it and let a prompt display as something it is not.
"""

import html
import re
from collections.abc import Sequence

from mechlab.errors import InputError

# Unicode's bidirectional formatting characters (embeddings, overrides, isolates, marks).
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def show_bidi(text: str) -> str:
    """``text`` with each bidirectional control written as ``<U+XXXX>``.

    >>> show_bidi("abc\u202edef")
    'abc<U+202E>def'
    """
    return _BIDI.sub(lambda match: f"<U+{ord(match.group()):04X}>", text)


def escape(text: object) -> str:
    """HTML-escape any value's string form, quotes included, bidirectional controls made visible."""
    return html.escape(show_bidi(str(text)), quote=True)


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
