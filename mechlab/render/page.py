"""Self-contained offline HTML pages: sections of text, tables, figures and circuitsvis widgets.

A ``Page`` renders to one HTML document that needs no network: figures are ``data:`` URIs, styles
are inline, and circuitsvis's JavaScript bundle is embedded **once** however many widgets the page
mounts (circuitsvis's own ``str(html)`` imports its bundle from a CDN, and its ``local_src`` inlines
the 1.3 MB bundle into every widget). A full document also carries a Content-Security-Policy that
forbids every remote fetch, so an offline page cannot silently depend on the network.

Everything that comes from a model or a prompt is escaped: text through ``html.escape``, widget
props as JSON with ``<``, ``>`` and ``&`` written as ``\\u003c``-style escapes, so a token such as
``</script>`` can neither end a script element nor open a tag.

Element ids are ``{id_prefix}-s{n}`` (sections) and ``{id_prefix}-w{n}`` (widgets). Pass
``id_prefix`` for reproducible output (snapshot tests); left at ``None``, each render draws a fresh
prefix from a process-wide counter, so several pages shown in one notebook never share an id.

    >>> page = Page("Demo", id_prefix="demo")
    >>> _ = page.section("Tokens").text("Tokens may hold <script> tags; they are escaped.")
    >>> "&lt;script&gt;" in page.render()
    True
"""

import base64
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from mechlab.errors import InputError
from mechlab.files import atomic_write
from mechlab.render.figures import png_data_uri
from mechlab.render.html import escape, image, show_bidi, table

WIDGET_COMPONENTS: tuple[str, ...] = (
    "AttentionHeads",
    "AttentionPattern",
    "AttentionPatterns",
    "ColoredTokens",
    "ColoredTokensMulti",
    "TextNeuronActivations",
    "TokenLogProbs",
    "TopkSamples",
    "TopkTokens",
)

# The page may run its own scripts (each allowed by its sha256, so an injected one would not run)
# and show data: images; it may fetch nothing, submit nothing, and not change its base URL.
CSP = (
    "default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; img-src data: blob:; "
    "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'"
)
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def csp(body: str) -> str:
    """The Content-Security-Policy of a document with ``body``: its inline scripts by hash."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode() + "'"
        for code in _SCRIPT.findall(body)
    ]
    return CSP.format(scripts=" ".join(dict.fromkeys(hashes)) or "'none'")


STYLE = """
.mechlab-page{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:0 auto;
 padding:0 12px;color:#1b1b1b;line-height:1.45}
.mechlab-page h1{font-size:1.6em;margin:.6em 0 .2em}.mechlab-page h2{font-size:1.25em;margin:1.4em 0 .4em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
.mechlab-page .subtitle{color:#555;margin-top:0}.mechlab-page figure{margin:.8em 0}
.mechlab-page figcaption{color:#555;font-size:.9em}
.mechlab-page table.mechlab{border-collapse:collapse;font-size:.9em;margin:.6em 0}
.mechlab-page table.mechlab td,.mechlab-page table.mechlab th{border:1px solid #ddd;padding:2px 8px;
 text-align:left}
.mechlab-page table.mechlab caption{caption-side:top;text-align:left;color:#555;padding-bottom:4px}
.mechlab-page .tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;border-radius:3px;
 padding:1px 1px;margin:0 1px;line-height:1.9}
.mechlab-page .widget{margin:10px 0;min-height:40px}.mechlab-page .note{color:#555;font-size:.9em}
"""

_COUNTER = itertools.count(1)


@functools.cache
def circuitsvis_bundle() -> str:
    """circuitsvis's browser bundle (it defines the global ``CircuitsVis``), safe to inline.

    ``</script`` inside the bundle (one string literal) is written ``<\\/script``, which JavaScript
    reads as the same string; the trailing ``sourceMappingURL`` comment is dropped so no browser
    asks for a map file.
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(
            f"circuitsvis's bundle is missing ({path}: {error.strerror}); reinstall circuitsvis "
            "(`pip install --force-reinstall circuitsvis`)."
        ) from error
    lines = [line for line in source.splitlines() if not line.startswith("//# sourceMappingURL")]
    return "\n".join(lines).replace("</script", "<\\/script")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"Widget props must be finite numbers, got {value}.")
    if isinstance(value, str):
        return show_bidi(value)
    return value


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``<``, ``>``, ``&`` or line separators).

    >>> script_json({"token": "</script>"})
    '{"token": "\\\\u003c/script\\\\u003e"}'
    """
    try:
        text = json.dumps(_plain(value), ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise InputError(f"Widget props must be finite numbers: {error}.") from error
    for raw, safe in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, safe)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@dataclasses.dataclass(frozen=True)
class Widget:
    """A circuitsvis React component and its props, mounted by the page that holds it."""

    component: str
    props: Mapping[str, Any]
    caption: str = ""

    def __post_init__(self) -> None:
        if self.component not in WIDGET_COMPONENTS:
            raise ValueError(
                f"Unknown circuitsvis component {self.component!r}; known: {', '.join(WIDGET_COMPONENTS)}."
            )


@dataclasses.dataclass(frozen=True)
class _Block:
    kind: str  # "html" | "widget"
    markup: str = ""
    widget: Widget | None = None


class Section:
    """A titled part of a page; its methods append blocks and return the section for chaining."""

    def __init__(self, title: str, intro: str = "") -> None:
        self.title = title
        self.blocks: list[_Block] = []
        if intro:
            self.text(intro)

    def text(self, text: str, *, note: bool = False) -> "Section":
        """A paragraph of plain text (escaped)."""
        css = ' class="note"' if note else ""
        self.blocks.append(_Block("html", f"<p{css}>{escape(text)}</p>"))
        return self

    def html(self, markup: str) -> "Section":
        """Trusted markup built by mechlab's own renderers (which escape what they embed)."""
        self.blocks.append(_Block("html", markup))
        return self

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str = ""
    ) -> "Section":
        """A table; every cell is escaped."""
        self.blocks.append(_Block("html", table(headers, rows, caption=caption)))
        return self

    def figure(self, fig: Figure | str, *, alt: str, caption: str = "") -> "Section":
        """A matplotlib figure (or a ``data:image/...`` URI) embedded as an image."""
        uri = fig if isinstance(fig, str) else png_data_uri(fig)
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(_Block("html", f"<figure>{image(uri, alt)}{cap}</figure>"))
        return self

    def widget(self, component: str, props: Mapping[str, Any], *, caption: str = "") -> "Section":
        """An interactive circuitsvis component, e.g. ``("AttentionHeads", {...})``."""
        self.blocks.append(_Block("widget", widget=Widget(component, dict(props), caption)))
        return self


class Page:
    """An offline HTML page built from sections.

    Args:
        title: the page heading (escaped).
        subtitle: a line under the heading (escaped).
        id_prefix: prefix of every element id; ``None`` draws a fresh one per render.
    """

    def __init__(self, title: str, *, subtitle: str = "", id_prefix: str | None = None) -> None:
        if id_prefix is not None and not id_prefix.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"id_prefix must be letters, digits, '-' or '_', got {id_prefix!r}.")
        self.title = title
        self.subtitle = subtitle
        self.id_prefix = id_prefix
        self.sections: list[Section] = []

    def section(self, title: str, intro: str = "") -> Section:
        """Append a new section and return it."""
        section = Section(title, intro)
        self.sections.append(section)
        return section

    def extend(self, other: "Page") -> "Page":
        """Append another page's sections (e.g. a result's own page) to this one."""
        self.sections.extend(other.sections)
        return self

    @property
    def has_widgets(self) -> bool:
        return any(b.kind == "widget" for s in self.sections for b in s.blocks)

    def body(self, prefix: str | None = None) -> str:
        """The page content as an HTML fragment (what Jupyter shows): bundle once, then mounts."""
        prefix = prefix or self.id_prefix or f"mechlab-{next(_COUNTER)}"
        parts = [f'<div class="mechlab-page" id="{prefix}"><style>{STYLE}</style>']
        parts.append(f"<h1>{escape(self.title)}</h1>")
        if self.subtitle:
            parts.append(f'<p class="subtitle">{escape(self.subtitle)}</p>')
        if len(self.sections) > 2:
            links = "".join(
                f'<li><a href="#{prefix}-s{i}">{escape(s.title)}</a></li>'
                for i, s in enumerate(self.sections)
            )
            parts.append(f"<nav><ul>{links}</ul></nav>")
        mounts: list[dict[str, Any]] = []
        for i, section in enumerate(self.sections):
            parts.append(f'<section id="{prefix}-s{i}"><h2>{escape(section.title)}</h2>')
            for block in section.blocks:
                if block.widget is None:
                    parts.append(block.markup)
                    continue
                widget_id = f"{prefix}-w{len(mounts)}"
                mounts.append(
                    {"id": widget_id, "component": block.widget.component, "props": block.widget.props}
                )
                cap = f'<p class="note">{escape(block.widget.caption)}</p>' if block.widget.caption else ""
                parts.append(f'{cap}<div class="widget" id="{widget_id}"></div>')
            parts.append("</section>")
        if mounts:
            parts.append(_mount_scripts(mounts))
        parts.append("</div>")
        return "\n".join(parts)

    def render(self, *, prefix: str | None = None) -> str:
        """A complete HTML document."""
        body = self.body(prefix)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp(body)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(self.title)}</title></head>\n<body>\n{body}\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the document to ``path`` atomically; returns the path."""
        return atomic_write(Path(path), self.render())

    def _repr_html_(self) -> str:
        return self.body()


def _mount_scripts(mounts: list[dict[str, Any]]) -> str:
    """The bundle (once, unless an earlier output on the page loaded it) and one mount script."""
    loader = (
        '<script>if(typeof window.CircuitsVis==="undefined"){\n'
        + circuitsvis_bundle()
        + "\nwindow.CircuitsVis=CircuitsVis;}</script>"
    )
    mount = (
        "<script>(function(){var mounts=" + script_json(mounts) + ";"
        "mounts.forEach(function(m){var el=document.getElementById(m.id);"
        "try{window.CircuitsVis.render(m.id,window.CircuitsVis[m.component],m.props);}"
        "catch(e){if(el){el.textContent='This view could not be drawn: '+e;}}});})();</script>"
    )
    return loader + "\n" + mount
