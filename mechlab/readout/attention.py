"""Attention patterns you can look at offline: interactive circuitsvis views and static heatmaps.

``attention_view(model, prompt, layers=..., heads=...)`` runs the model once, caching only the
attention-pattern hooks it needs, and returns an ``AttentionView``. In Jupyter it renders as
circuitsvis's interactive ``AttentionHeads`` widget (one per layer); ``view.save("attn.html")``
writes a self-contained page (circuitsvis's JavaScript embedded once, nothing fetched from the
network); ``view.plot()`` draws a matplotlib grid of heatmaps for reports and papers.

Patterns are ``[dest, src]``: row ``q`` is how much the token at position ``q`` attends to each
earlier position. Grouped-query models have one pattern per *query* head.
"""

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.activations import capture
from mechlab.errors import InputError
from mechlab.files import atomic_write
from mechlab.render.figures import png_bytes
from mechlab.render.page import Page
from mechlab.render.tokens import plot_text, visible
from mechlab.sites import Site, n_heads_for, validate
from mechlab.tokens import as_tokens, str_tokens
from mechlab.types import HookedModel, Tokens

HeadSpec = Sequence[int] | Sequence[tuple[int, int]] | None
MAX_PLOTTED_HEADS = 36


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionView:
    """Attention patterns of selected heads on one prompt.

    Attributes:
        tokens: the prompt ``[1, pos]``; ``str_tokens`` its token texts.
        heads: ``(layer, head)`` of each pattern, in order.
        patterns: ``[head, q_pos, k_pos]``, one row per entry of ``heads``.
    """

    tokens: Tokens
    str_tokens: tuple[str, ...]
    heads: tuple[tuple[int, int], ...]
    patterns: Float[Tensor, "head q_pos k_pos"]

    def pattern(self, layer: int, head: int) -> Float[Tensor, "q_pos k_pos"]:
        """One head's pattern."""
        if (layer, head) not in self.heads:
            raise InputError(f"L{layer}H{head} is not in this view; it holds {_names(self.heads[:8])}….")
        return self.patterns[self.heads.index((layer, head))]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(layer for layer, _ in self.heads))

    def add_to(self, page: Page, *, title: str = "Attention patterns", static: bool = False) -> Page:
        """Append one section with an interactive widget per layer (and the static grid if asked)."""
        section = page.section(
            title,
            "Each row is a destination token, each column a source token it attends to. Click a head "
            "to enlarge it; hover over a token to see where it attends.",
        )
        tokens = [visible(t) for t in self.str_tokens]
        for layer in self.layers:
            index = [i for i, (lay, _) in enumerate(self.heads) if lay == layer]
            section.widget(
                "AttentionHeads",
                {
                    "attention": self.patterns[index].float(),
                    "tokens": tokens,
                    "attentionHeadNames": _names([self.heads[i] for i in index]),
                    "maskUpperTri": True,
                },
                caption=f"Layer {layer}",
            )
        if static:
            section.figure(self.plot(), alt="attention patterns as heatmaps")
        return page

    def page(self, title: str = "Attention patterns", *, static: bool = True) -> Page:
        return self.add_to(Page(title, subtitle="".join(self.str_tokens)), static=static)

    def save(self, path: str | Path, *, static: bool = True) -> Path:
        """Write a self-contained, offline HTML page; returns the path."""
        return self.page(static=static).save(path)

    def plot(self, *, max_heads: int = MAX_PLOTTED_HEADS, columns: int = 6) -> Figure:
        """A grid of heatmaps, one per head (the first ``max_heads`` heads)."""
        shown = list(range(min(len(self.heads), max_heads)))
        cols = min(columns, len(shown))
        rows = math.ceil(len(shown) / cols)
        n = len(self.str_tokens)
        size = 2.2 if n <= 20 else 3.2
        fig = Figure(figsize=(size * cols + 0.6, size * rows + 0.4), layout="constrained")
        labels = [plot_text(t) for t in self.str_tokens] if n <= 40 else None
        image = None
        for slot, index in enumerate(shown):
            ax = fig.add_subplot(rows, cols, slot + 1)
            image = ax.imshow(self.patterns[index].float().numpy(), cmap="Blues", vmin=0, vmax=1)
            layer, head = self.heads[index]
            ax.set_title(f"L{layer}H{head}", fontsize=8)
            if labels is None:
                ax.tick_params(labelsize=5)
                continue
            ax.set_xticks(range(n), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(n), labels, fontsize=5)
        if image is not None:
            fig.colorbar(image, ax=fig.axes, shrink=0.6, label="attention")
        if len(shown) < len(self.heads):
            fig.suptitle(f"first {len(shown)} of {len(self.heads)} heads", fontsize=9)
        return fig

    def save_png(self, path: str | Path, *, dpi: int = 130) -> Path:
        """The static heatmap grid as a PNG file."""
        return atomic_write(Path(path), png_bytes(self.plot(), dpi=dpi))

    def _repr_html_(self) -> str:
        return self.page(static=False).body()


def _names(heads: Sequence[tuple[int, int]]) -> list[str]:
    return [f"L{layer}H{head}" for layer, head in heads]


def _select(model: HookedModel, layers: int | Sequence[int] | None, heads: HeadSpec) -> list[tuple[int, int]]:
    n_layers, n_heads = int(model.cfg.n_layers), n_heads_for(model.cfg, "pattern")
    if heads is not None and len(heads) and isinstance(heads[0], tuple | list):
        pairs = [(int(lay), int(h)) for lay, h in heads]  # type: ignore[misc]
    else:
        chosen = range(n_layers) if layers is None else [layers] if isinstance(layers, int) else list(layers)
        picked = range(n_heads) if heads is None else [int(h) for h in heads]  # type: ignore[arg-type]
        pairs = [(lay, h) for lay in chosen for h in picked]
    if not pairs:
        raise InputError("No heads selected: pass layers=None (all) or a non-empty list of layers/heads.")
    for layer, head in pairs:
        validate(Site("pattern", layer, head), model)
    return [(layer % n_layers, head) for layer, head in pairs]


def attention_view(
    model: HookedModel,
    tokens: str | Tensor,
    layers: int | Sequence[int] | None = None,
    heads: HeadSpec = None,
) -> AttentionView:
    """Attention patterns of the chosen heads on one prompt.

    Args:
        model: a hooked model.
        tokens: one prompt, as text or token ids.
        layers: a layer, a list of layers, or ``None`` for all (negative layers count from the end).
        heads: head indices (taken in every chosen layer), ``(layer, head)`` pairs (``layers`` is
            then ignored), or ``None`` for all heads.

    Raises:
        SiteError: a layer or head the model does not have.
    """
    toks = as_tokens(model, tokens)
    pairs = _select(model, layers, heads)
    sites = [Site("pattern", layer) for layer in dict.fromkeys(layer for layer, _ in pairs)]
    acts = capture(model, toks, sites, logits=False)
    patterns = torch.stack([acts[Site("pattern", layer)][0, head] for layer, head in pairs]).float()
    return AttentionView(toks, str_tokens(model, toks), tuple(pairs), patterns)
