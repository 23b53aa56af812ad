"""Feature pages: what one SAE latent responds to and what it writes.

For each latent a page shows, as Neuronpedia's feature dashboards do:

- its **top-activating contexts**: the token sequences of a corpus where it fires most, each cut to
  a window around its peak token, every token highlighted by the latent's activation (one colour
  scale per latent, so contexts compare);
- its **activation histogram**: how often it fires (density) and how strongly, over every token;
- its **logit effects**: the tokens its decoder direction promotes and suppresses when read
  straight through the unembedding (``W_dec[latent] @ W_U``, no final norm, as SAELens and
  Neuronpedia compute them) — where the latent writes into the residual stream's space.

``feature_pages`` reads the corpus in one pass, batch by batch (``feature_pages_many``: one pass for
several SAEs), and keeps only bounded state per latent: the ``contexts`` best windows (values,
tokens, where they came from), a fixed log-spaced histogram and a few running sums. Memory is
``O(latents × contexts × window)`` whatever the corpus size. The result renders itself
(``FeatureReport.page()``, ``save(path)``) as one offline HTML page through ``mechlab.render.page``.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.activations import capture
from mechlab.dictionaries.sae import SAE
from mechlab.dictionaries.site import SAESite, attached, kind_name
from mechlab.errors import InputError
from mechlab.progress import Progress, Step
from mechlab.render.html import escape, table
from mechlab.render.page import Page, Section
from mechlab.render.tokens import colored_tokens, visible
from mechlab.tokens import token_text
from mechlab.types import HookedModel

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


@dataclasses.dataclass
class _Running:
    """The bounded state of one pass: top windows, histogram and sums for ``n`` latents."""

    n: int
    k: int
    width: int
    values: Tensor = dataclasses.field(init=False)  # [n, k] window peaks
    tokens: Tensor = dataclasses.field(init=False)  # [n, k, width] (−1: outside the sequence)
    acts: Tensor = dataclasses.field(init=False)  # [n, k, width]
    where: Tensor = dataclasses.field(init=False)  # [n, k, 2] (sequence, peak position)
    counts: Tensor = dataclasses.field(init=False)  # [n, N_BINS]
    n_active: Tensor = dataclasses.field(init=False)
    total: Tensor = dataclasses.field(init=False)
    peak: Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.values = torch.full((self.n, self.k), -math.inf)
        self.tokens = torch.full((self.n, self.k, self.width), -1, dtype=torch.int64)
        self.acts = torch.zeros(self.n, self.k, self.width)
        self.where = torch.zeros(self.n, self.k, 2, dtype=torch.int64)
        self.counts = torch.zeros(self.n, N_BINS, dtype=torch.int64)
        self.n_active = torch.zeros(self.n, dtype=torch.int64)
        self.total = torch.zeros(self.n, dtype=torch.float64)
        self.peak = torch.zeros(self.n)

    def update(
        self, latents: Float[Tensor, "batch pos n"], tokens: Int[Tensor, "batch pos"], first: int, left: int
    ) -> None:
        """Fold one batch in; ``first`` is the batch's first sequence index in the corpus."""
        latents, tokens = latents.float().cpu(), tokens.cpu()
        batch, n_pos, _ = latents.shape
        active = latents > 0
        self.n_active += active.sum((0, 1))
        self.total += latents.clamp_min(0).sum((0, 1), dtype=torch.float64)
        self.peak = torch.maximum(self.peak, latents.amax((0, 1)))
        _, _, cols = active.nonzero(as_tuple=True)  # row-major, as latents[active]
        positive = latents[active]
        if positive.numel():
            log = positive.log10()
            bins = ((log - LOG_LOW) * PER_DECADE).floor().clamp(0, N_BINS - 1).long()
            self.counts.view(-1).index_add_(0, cols * N_BINS + bins, torch.ones_like(bins))
        # One window per (sequence, latent) around the sequence's peak for that latent.
        peaks, peak_pos = latents.max(1)  # [batch, n]
        offsets = torch.arange(self.width) - left
        index = peak_pos[..., None] + offsets  # [batch, n, width]
        inside = (index >= 0) & (index < n_pos)
        index = index.clamp(0, n_pos - 1)
        window_acts = latents.transpose(1, 2).gather(2, index)  # [batch, n, width]
        window_tokens = tokens[:, None, :].expand(-1, self.n, -1).gather(2, index)
        window_tokens = window_tokens.masked_fill(~inside, -1)
        window_acts = window_acts.masked_fill(~inside, 0.0)
        sequences = torch.arange(first, first + batch)[:, None].expand(-1, self.n)
        where = torch.stack([sequences, peak_pos], -1)  # [batch, n, 2]
        values = torch.cat([self.values, peaks.T], 1)
        order = values.topk(self.k, dim=1).indices  # [n, k]
        self.values = values.gather(1, order)
        pick = order[..., None].expand(-1, -1, self.width)
        self.tokens = torch.cat([self.tokens, window_tokens.transpose(0, 1)], 1).gather(1, pick)
        self.acts = torch.cat([self.acts, window_acts.transpose(0, 1)], 1).gather(1, pick)
        self.where = torch.cat([self.where, where.transpose(0, 1)], 1).gather(
            1, order[..., None].expand(-1, -1, 2)
        )


def _logit_effects(
    model: Any, kind: SAESite, latent: int, n: int
) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    """The ``n`` largest and smallest entries of ``W_dec[latent] @ W_U`` with their tokens."""
    if n == 0 or kind.host not in RESIDUAL_SPACE or kind.sae.cfg.d_in != int(model.cfg.d_model):
        return (), ()
    with torch.no_grad():
        w_u = model.W_U
        effect = kind.sae.W_dec[latent].to(w_u.device, w_u.dtype) @ w_u
    n = min(n, effect.shape[0] // 2)
    up = effect.topk(n)
    down = (-effect).topk(n)
    promoted = tuple(
        (token_text(model, int(i)), float(v)) for v, i in zip(up.values, up.indices, strict=True)
    )
    suppressed = tuple(
        (token_text(model, int(i)), -float(v)) for v, i in zip(down.values, down.indices, strict=True)
    )
    return promoted, suppressed


def feature_pages(
    model: HookedModel,
    sae: SAE | SAESite,
    tokens: Int[Tensor, "seq seq_pos"],
    *,
    latents: Sequence[int] | None = None,
    top: int = 20,
    contexts: int = 10,
    window: tuple[int, int] = (16, 4),
    logits: int = 10,
    batch_size: int = 8,
    corpus: str = "the given tokens",
    name: str = "sae",
    progress: Progress | None = None,
) -> FeatureReport:
    """Feature pages of some latents of ``sae`` from one pass over the corpus ``tokens``.

    Args:
        model: the hooked model the SAE reads.
        sae: an SAE (attached for the call) or an attached ``SAESite``.
        tokens: the corpus, ``[n_seq, n_pos]`` token ids (``mechlab.dictionaries.corpus`` builds one).
        latents: the latents to describe; ``None``: the ``top`` latents that fire on most tokens.
        contexts: top-activating windows kept per latent.
        window: tokens kept before and after each window's peak token.
        logits: promoted and suppressed tokens listed per latent (0: none).
        batch_size: sequences per forward pass.
        corpus: a description of the corpus for the page.
        name: the page's name for an SAE that is not attached (its site kind's name while it runs).
        progress: called with ``Step(done, total)`` after each batch.

    Raises:
        InputError: an empty corpus, a latent that does not exist, or non-positive sizes.
    """
    return feature_pages_many(
        model,
        {name: (sae, latents)},
        tokens,
        top=top,
        contexts=contexts,
        window=window,
        logits=logits,
        batch_size=batch_size,
        corpus=corpus,
        progress=progress,
    )[name]


def feature_pages_many(
    model: HookedModel,
    saes: Mapping[str, tuple[SAE | SAESite, Sequence[int] | None]],
    tokens: Int[Tensor, "seq seq_pos"],
    *,
    top: int = 20,
    contexts: int = 10,
    window: tuple[int, int] = (16, 4),
    logits: int = 10,
    batch_size: int = 8,
    corpus: str = "the given tokens",
    progress: Progress | None = None,
) -> dict[str, FeatureReport]:
    """``feature_pages`` of several SAEs (``{name: (sae, latents)}``) from one shared pass over the
    corpus: every batch runs the model once and feeds each SAE. Arguments as ``feature_pages``."""
    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.numel() == 0
        or tokens.is_floating_point()
    ):
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputError(f"feature_pages needs a corpus of token ids [n_seq, n_pos]; got {shape}.")
    sizes = {"top": top, "contexts": contexts, "batch_size": batch_size, "logits": logits + 1}
    if any(value < 1 for value in sizes.values()) or min(window) < 0:
        raise InputError(
            f"feature_pages needs top, contexts, batch_size ≥ 1, logits ≥ 0 and window ≥ (0, 0); got "
            f"top={top}, contexts={contexts}, batch_size={batch_size}, logits={logits}, window={window}."
        )
    with ExitStack() as stack, torch.no_grad():
        kinds: dict[str, SAESite] = {}
        chosen: dict[str, list[int] | None] = {}
        running: dict[str, _Running] = {}
        for name, (sae, latents) in saes.items():
            kind = (
                sae
                if isinstance(sae, SAESite)
                else stack.enter_context(attached(model, sae, name=kind_name(name)))
            )
            d_sae = kind.sae.cfg.d_sae
            picked = None if latents is None else list(dict.fromkeys(int(i) for i in latents))
            if picked is not None:
                bad = [i for i in picked if not 0 <= i < d_sae]
                if bad or not picked:
                    raise InputError(
                        f"Latents {bad or picked} do not exist: the SAE has latents 0..{d_sae - 1}."
                    )
            tracked = d_sae if picked is None else len(picked)
            kinds[name], chosen[name] = kind, picked
            running[name] = _Running(tracked, min(contexts, int(tokens.shape[0])), sum(window) + 1)
        sites = {name: kind.site() for name, kind in kinds.items()}
        device = torch.device(model.cfg.device)
        n_batches = math.ceil(tokens.shape[0] / batch_size)
        for b in range(n_batches):
            batch = tokens[b * batch_size : (b + 1) * batch_size].to(device)
            captured = capture(model, batch, list(sites.values()), max_bytes=None, logits=False)
            for name, site in sites.items():
                acts = captured[site]
                if not torch.isfinite(acts).all():
                    raise InputError(
                        f"The latents of SAE {name!r} are not finite on corpus sequences {b * batch_size}.."
                        f"{b * batch_size + len(batch) - 1}: check the SAE's weights and the model's dtype."
                    )
                picked = chosen[name]
                running[name].update(
                    acts if picked is None else acts[..., picked], batch, b * batch_size, window[0]
                )
            if progress is not None:
                progress(Step(b + 1, n_batches))
        return {
            name: _report(
                model, kinds[name], running[name], chosen[name], top, logits, int(tokens.numel()), corpus
            )
            for name in saes
        }


def _report(
    model: HookedModel,
    kind: SAESite,
    running: _Running,
    chosen: list[int] | None,
    top: int,
    logits: int,
    n_tokens: int,
    corpus: str,
) -> FeatureReport:
    """The report of one SAE once the pass is over."""
    d_sae = kind.sae.cfg.d_sae
    frequency = running.n_active.double() / n_tokens
    order = chosen or frequency.argsort(descending=True, stable=True)[:top].tolist()
    rows = list(range(len(chosen))) if chosen is not None else order
    features = tuple(
        _feature(model, kind, running, row, latent, n_tokens, logits)
        for row, latent in zip(rows, order, strict=True)
    )
    if chosen is not None:
        full = torch.full((d_sae,), math.nan, dtype=torch.float64)
        full[chosen] = frequency
        frequency = full
    return FeatureReport(kind.name, str(kind.sae.cfg.site), features, n_tokens, corpus, frequency.float())


def _feature(
    model: HookedModel, kind: SAESite, running: _Running, row: int, latent: int, n_tokens: int, logits: int
) -> Feature:
    found = []
    for j in range(running.k):
        if not running.values[row, j] > 0:
            continue
        ids = running.tokens[row, j]
        keep = ids >= 0
        values = running.acts[row, j][keep]
        found.append(
            Context(
                tokens=tuple(token_text(model, int(i)) for i in ids[keep]),
                values=tuple(float(v) for v in values),
                peak=int(values.argmax()),
                sequence=int(running.where[row, j, 0]),
                position=int(running.where[row, j, 1]),
            )
        )
    n_active = int(running.n_active[row])
    promoted, suppressed = _logit_effects(model, kind, latent, logits)
    return Feature(
        latent=latent,
        contexts=tuple(found),
        n_tokens=n_tokens,
        n_active=n_active,
        max_value=float(running.peak[row]),
        mean_active=float(running.total[row]) / n_active if n_active else 0.0,
        counts=tuple(int(c) for c in running.counts[row]),
        promoted=promoted,
        suppressed=suppressed,
    )
