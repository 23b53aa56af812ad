"""A feature page's data and rendering: ``Context`` (one top-activating window), ``Feature`` (one
latent's contexts, histogram and logit effects) and ``FeatureReport`` (the pages of some latents of
one SAE, rendered as one offline HTML page through ``mechlab.render.page``). ``features`` computes
them from a corpus.
"""

import dataclasses
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.render.html import escape, table
from mechlab.render.page import Page, Section
from mechlab.render.tokens import colored_tokens, visible

# Histogram bins: log10 of positive activations from 1e-4 to 1e4, 20 bins a decade (values outside
# go to the end bins); zeros are counted apart.
LOG_LOW, LOG_HIGH, PER_DECADE = -4.0, 4.0, 20
N_BINS = int((LOG_HIGH - LOG_LOW) * PER_DECADE)
# Host kinds that live in the residual stream's basis, where ``W_dec @ W_U`` means something.
RESIDUAL_SPACE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed", "ln_final")


def bin_edges() -> Float[Tensor, " edge"]:
    """The histogram's ``N_BINS + 1`` bin edges (activation values, log-spaced)."""
    return torch.logspace(LOG_LOW, LOG_HIGH, N_BINS + 1, dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class Context:
    """One top-activating window of a corpus sequence.

    Attributes:
        tokens: the window's token texts.
        values: the latent's activation on each token.
        peak: the index (in the window) of the token where it is largest.
        sequence, position: where the peak token is in the corpus (row, position).
    """

    tokens: tuple[str, ...]
    values: tuple[float, ...]
    peak: int
    sequence: int
    position: int

    @property
    def value(self) -> float:
        return self.values[self.peak]


@dataclasses.dataclass(frozen=True)
class Feature:
    """What one latent does on a corpus (see the module docstring).

    Attributes:
        latent: its index.
        contexts: its top-activating windows, strongest first (those where it fired at all).
        n_tokens: tokens read; n_active: tokens where it was positive.
        max_value, mean_active: its largest activation; its mean where positive.
        counts: histogram counts of its positive activations over ``bin_edges()``.
        promoted, suppressed: ``(token, logit effect)`` of the tokens its decoder direction raises
            and lowers most (empty when the site is not in the residual stream's basis).
    """

    latent: int
    contexts: tuple[Context, ...]
    n_tokens: int
    n_active: int
    max_value: float
    mean_active: float
    counts: tuple[int, ...]
    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]

    @property
    def density(self) -> float:
        """The fraction of tokens where the latent fires."""
        return self.n_active / self.n_tokens if self.n_tokens else 0.0

    def summary(self) -> str:
        if self.n_active == 0:
            return f"Latent {self.latent} never fired on the {self.n_tokens:,} tokens read."
        return (
            f"Latent {self.latent} fires on {self.n_active:,} of {self.n_tokens:,} tokens "
            f"(density {self.density:.3%}); its largest activation is {self.max_value:.3g}, its mean "
            f"where it fires {self.mean_active:.3g}."
        )

    def plot(self) -> Figure:
        """The histogram of its positive activations (log-spaced bins)."""
        edges = bin_edges().numpy()
        fig = Figure(figsize=(5.5, 2.2), layout="constrained")
        ax = fig.add_subplot()
        counts = list(self.counts)
        used = [i for i, c in enumerate(counts) if c]
        if used:
            lo, hi = max(used[0] - 1, 0), min(used[-1] + 2, len(counts))
            ax.stairs(counts[lo:hi], edges[lo : hi + 1], fill=True, color="#d62728", alpha=0.7)
            ax.set_xscale("log")
        ax.set_title(f"Latent {self.latent}: activations where it fires", fontsize=9)
        ax.set_xlabel("activation", fontsize=8)
        ax.set_ylabel("tokens", fontsize=8)
        ax.tick_params(labelsize=7)
        return fig

    def add_to(self, section: Section, *, anchor: str) -> Section:
        """Append this latent's card (summary, histogram, logit effects, contexts) to ``section``;
        ``anchor`` becomes the card's element id, so ``#anchor`` links to it."""
        section.html(f'<div id="{escape(anchor)}"></div>')
        section.text(self.summary())
        if self.n_active:
            section.figure(self.plot(), alt=f"activation histogram of latent {self.latent}")
        if self.promoted:
            rows = [
                (visible(up), f"{up_value:+.3f}", visible(down), f"{down_value:+.3f}")
                for (up, up_value), (down, down_value) in zip(self.promoted, self.suppressed, strict=True)
            ]
            section.table(
                ["promoted token", "logit effect", "suppressed token", "logit effect"],
                rows,
                caption="Decoder direction read through the unembedding (W_dec @ W_U)",
            )
        if not self.contexts:
            return section
        bound = max(context.value for context in self.contexts)
        rows_html = []
        for context in self.contexts:
            where = escape(f"seq {context.sequence}, pos {context.position}: {context.value:.3g}")
            tokens = colored_tokens(list(context.tokens), list(context.values), fmt="{:.3f}", bound=bound)
            rows_html.append(f'<div class="context"><span class="note">{where}</span>{tokens}</div>')
        section.html('<div class="contexts">' + "".join(rows_html) + "</div>")
        return section


@dataclasses.dataclass(frozen=True)
class FeatureReport:
    """Feature pages of some latents of one SAE.

    Attributes:
        name: the SAE's site-kind name; site: the hook point it reads.
        features: one ``Feature`` per latent, in the order asked for (or most often active first).
        n_tokens: tokens read; corpus: where they came from (free text).
        frequency: each latent's firing frequency on those tokens ``[d_sae]`` (NaN for latents not
            tracked, when pages were asked for chosen latents).
    """

    name: str
    site: str
    features: tuple[Feature, ...]
    n_tokens: int
    corpus: str
    frequency: Float[Tensor, " d_sae"]

    def __getitem__(self, latent: int) -> Feature:
        for feature in self.features:
            if feature.latent == latent:
                return feature
        raise KeyError(f"Latent {latent} has no page here; pages: {[f.latent for f in self.features]}.")

    def anchor(self, latent: int) -> str:
        """The element id of ``latent``'s card (``{name}-latent-{latent}``)."""
        return f"{self.name}-latent-{latent}"

    def add_to(self, page: Page, *, title: str | None = None) -> Page:
        """One section per latent (``title`` prefixes each section's title)."""
        prefix = title or f"{self.name} ({self.site})"
        for feature in self.features:
            feature.add_to(
                page.section(f"{prefix}: latent {feature.latent}"), anchor=self.anchor(feature.latent)
            )
        return page

    def page(self, *, id_prefix: str | None = None) -> Page:
        read = torch.isfinite(self.frequency)  # latents not tracked (pages for chosen latents) are NaN
        dead = int((self.frequency[read] == 0).sum())
        page = Page(
            f"Feature pages: {self.name} at {self.site}",
            subtitle=f"{len(self.features)} latents · {self.n_tokens:,} tokens of {self.corpus}",
            id_prefix=id_prefix,
        )
        section = page.section(
            "How to read these pages",
            "Each latent's card shows how often it fires and how strongly (a histogram of its positive "
            "activations over every token read), the tokens its decoder direction promotes and suppresses "
            "when read straight through the unembedding (no final norm), and the corpus windows where it "
            "fires most, each token coloured by the latent's activation on one scale per latent (hover "
            "for the value).",
        )
        section.text(
            f"{dead} of the {int(read.sum())} latents tracked never fired on these tokens.", note=True
        )
        rows = [
            (
                f.latent,
                f"{f.density:.3%}",
                f"{f.max_value:.3g}",
                ", ".join(repr(visible(t)) for t, _ in f.promoted[:5]),
            )
            for f in self.features
        ]
        links = "".join(
            f'<li><a href="#{escape(self.anchor(f.latent))}">latent {f.latent}</a></li>'
            for f in self.features
        )
        section.html(table(["latent", "density", "max", "promotes"], rows) + f"<ul>{links}</ul>")
        return self.add_to(page)

    def save(self, path: str | Path, *, id_prefix: str | None = None) -> Path:
        """Write the offline HTML page to ``path`` (atomically)."""
        return self.page(id_prefix=id_prefix).save(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "site": self.site,
            "n_tokens": self.n_tokens,
            "corpus": self.corpus,
            "features": [
                {
                    "latent": f.latent,
                    "density": f.density,
                    "max": f.max_value,
                    "mean_active": f.mean_active,
                    "promoted": [list(p) for p in f.promoted],
                    "suppressed": [list(s) for s in f.suppressed],
                    "contexts": [
                        {
                            "text": "".join(c.tokens),
                            "max": c.value,
                            "sequence": c.sequence,
                            "position": c.position,
                        }
                        for c in f.contexts
                    ],
                }
                for f in self.features
            ],
        }

    def _repr_html_(self) -> str:
        return self.page().body()
