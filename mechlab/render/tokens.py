"""Tokens coloured by a score: the HTML used by attribution results and report pages.

Works without JavaScript: each token is a ``<span>`` whose background is red for positive and blue
for negative scores (opacity by magnitude, relative to the largest magnitude shown), with the exact
value in its tooltip. Token text is escaped and whitespace made visible.
"""

from collections.abc import Sequence

from mechlab.render.html import escape


def visible(token: str) -> str:
    """Token text with newlines and tabs shown as ``↵`` and ``⇥``."""
    return token.replace("\n", "↵").replace("\t", "⇥")


def plot_text(text: str) -> str:
    r"""Text for a matplotlib label: whitespace made visible and ``$`` escaped, so a token such as
    ``"$$"`` is drawn as written instead of being parsed (and rejected) as mathtext.

    >>> plot_text("$$")
    '\\$\\$'
    """
    return visible(text).replace("$", r"\$")


def colored_tokens(
    tokens: Sequence[str], values: Sequence[float], *, fmt: str = "{:+.3f}", bound: float | None = None
) -> str:
    """An inline run of tokens coloured by ``values`` (same length); full colour at ``bound``
    (default: the largest magnitude shown), so several runs can share one scale."""
    if len(tokens) != len(values):
        raise ValueError(f"Got {len(tokens)} tokens but {len(values)} values.")
    bound = bound or max((abs(v) for v in values), default=0.0) or 1.0
    spans = []
    for token, value in zip(tokens, values, strict=True):
        alpha = min(abs(value) / bound, 1.0) * 0.85
        rgb = "214,39,40" if value >= 0 else "31,119,180"
        title = escape(f"{token!r}: {fmt.format(value)}")
        spans.append(
            f'<span class="tok" style="background:rgba({rgb},{alpha:.3f})" title="{title}">'
            f"{escape(visible(token))}</span>"
        )
    return '<div class="tokens">' + "".join(spans) + "</div>"
